"""The codec behind saved app sessions (`workbench.session_store`): Python objects ↔ a JSON tree.

It writes dataclasses of this project (`core.*`, `workbench.*`), dicts (any hashable keys),
lists, tuples, sets, numbers (NaN/inf too), None, str, bool, numpy arrays (base64), pandas
DataFrames (values and dtype per column, the index) and torch tensors (as keys into a tensor
list the caller stores in safetensors, dtype kept). A dataclass met twice comes back as one
object. `transient()` fields are not written and load as their default; a value that cannot be
written drops its field (reported), a field that cannot be read takes its default (reported).
Decoding never imports a class outside `core.`/`workbench.` (nor the app's entry scripts).

Saving runs at the end of every script run, so telling "unchanged" must be cheap even for a state
that holds a 1,000-edit run: `workbench.state_fingerprint.fingerprint` walks the state without
encoding it, and `to_json` reuses the JSON text of the values it found immutable from the
previous write (`Reuse`). No streamlit, no pickle.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import json
import math
import re
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

if TYPE_CHECKING:
    from workbench.state_fingerprint import Same

SAVED = "workbench_saved"            # dataclass field metadata key: False = not written
_MODULE = re.compile(r"(core|workbench)(\.[a-z_][a-z0-9_]*)+\Z")
_SCRIPTS = {"workbench.app", "workbench.__main__"}       # modules that run an app when imported
_MAX_DEPTH = 200
_RAW = re.compile(r'\{"__raw__":(\d+)\}')          # a reused text's place in `to_json` output

class SessionError(Exception):
    """The file cannot be (fully) read back: bad format, refused class, missing tensor."""


class Unencodable(Exception):
    """A value the codec cannot write."""


def transient(default: Any = None) -> Any:
    """A dataclass field that is never written (process-local or derived); loads as `default`."""
    return dataclasses.field(default=default, compare=False, metadata={SAVED: False})


# ---- encode ---------------------------------------------------------------------------------

class _Encoder:
    def __init__(self, reuse: Reuse | None = None):
        self.tensors: list[torch.Tensor] = []
        self.skipped: list[str] = []
        self._tensor_keys: dict[int, str] = {}
        self._objects: dict[int, int] = {}
        self._open: set[int] = set()
        self._refs = 0
        self.reuse = reuse
        self.raw: list[str] = []               # texts that the {"__raw__": i} markers stand for
        self.kept: dict[int, tuple[Any, str]] = {}

    def _reused(self, x: Any, make) -> Any:
        """`make()` — or, for a value vouched immutable, a marker that stands for its JSON text, taken
        from the previous encode when it met the same object (kept only when self-contained)."""
        reuse = self.reuse
        same = reuse.immutable.get(id(x)) if reuse is not None else None
        if same is None or same.obj is not x:
            return make()
        hit = reuse.texts.get(id(x))
        if hit is None or hit[0] is not x:
            before = (len(self.tensors), len(self._objects), self._refs, len(self.skipped))
            form = make()
            if before != (len(self.tensors), len(self._objects), self._refs, len(self.skipped)):
                return form                    # refers to tensors or shared objects: not reusable
            hit = (x, _dumps(form))
        self.kept[id(x)] = hit
        self.raw.append(hit[1])
        return {"__raw__": len(self.raw) - 1}

    def encode(self, x: Any, path: str, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise Unencodable(f"{path}: nested too deep")
        enc = lambda v, p: self.encode(v, p, depth + 1)  # noqa: E731
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int):
            return int(x)
        if isinstance(x, float):
            return float(x) if math.isfinite(x) else {"__float__": repr(float(x))}
        if isinstance(x, np.generic):
            return enc(x.item(), path)
        if x is pd.NA or x is pd.NaT:
            return None
        if isinstance(x, torch.Tensor):
            return {"__tensor__": self._tensor(x, path)}
        if isinstance(x, np.ndarray):
            return self._reused(x, lambda: self._array(x, path, depth))
        if isinstance(x, pd.DataFrame):
            return {"__frame__": self._reused(x, lambda: self._frame(x, path, depth))}
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return self._dataclass(x, path, depth)
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v, f"{path}[{i}]") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [enc(v, f"{path}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, (set, frozenset)):
            return {"__set__": [enc(v, f"{path}{{}}") for v in x]}
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in x):
                return {k: enc(v, f"{path}[{k!r}]") for k, v in x.items()}
            return {"__dict__": [[enc(k, f"{path} key"), enc(v, f"{path}[{k!r}]")] for k, v in x.items()]}
        raise Unencodable(f"{path}: {type(x).__module__}.{type(x).__qualname__}")

    def _array(self, x: np.ndarray, path: str, depth: int) -> dict:
        if x.dtype.kind in "biufc":
            return {"__ndarray__": base64.b64encode(np.ascontiguousarray(x).tobytes()).decode(),
                    "dtype": x.dtype.str, "shape": list(x.shape)}
        return {"__ndarray__": None, "dtype": x.dtype.str, "shape": list(x.shape),
                "items": self.encode(x.tolist(), path, depth + 1)}

    def _tensor(self, t: torch.Tensor, path: str) -> str:
        if t.layout != torch.strided or t.is_meta or t.is_quantized:
            raise Unencodable(f"{path}: a {t.layout} tensor")
        if id(t) not in self._tensor_keys:
            self._tensor_keys[id(t)] = f"t{len(self.tensors)}"
            self.tensors.append(t)
        return self._tensor_keys[id(t)]

    def _frame(self, df: pd.DataFrame, path: str, depth: int) -> dict:
        idx = df.index
        index = ({"range": [idx.start, idx.stop, idx.step]} if isinstance(idx, pd.RangeIndex)
                 else {"values": self.encode(idx.tolist(), f"{path}.index", depth + 1),
                       "dtype": str(idx.dtype)})
        return {"columns": self.encode(list(df.columns), f"{path}.columns", depth + 1),
                "dtypes": [str(t) for t in df.dtypes],
                "data": [self.encode(df.iloc[:, i].tolist(), f"{path}[{c!r}]", depth + 1)
                         for i, c in enumerate(df.columns)],
                "index": index, "index_name": self.encode(idx.name, f"{path}.index", depth + 1)}

    def _dataclass(self, x: Any, path: str, depth: int) -> dict:
        cls = type(x)
        if not _MODULE.fullmatch(cls.__module__) or not cls.__qualname__.isidentifier():
            raise Unencodable(f"{path}: {cls.__module__}.{cls.__qualname__} is not a project class")
        if id(x) in self._objects:
            self._refs += 1
            return {"__ref__": self._objects[id(x)]}
        if id(x) in self._open:
            raise Unencodable(f"{path}: refers to itself")
        self._open.add(id(x))
        out = self._reused(x, lambda: self._fields(x, path, depth))
        self._open.discard(id(x))
        self._objects[id(x)] = n = len(self._objects)
        return {"__dc__": [cls.__module__, cls.__qualname__], "id": n, "fields": out}

    def _fields(self, x: Any, path: str, depth: int) -> dict:
        out = {}
        for f in dataclasses.fields(x):
            if f.metadata.get(SAVED, True):
                try:
                    out[f.name] = self.encode(getattr(x, f.name), f"{path}.{f.name}", depth + 1)
                except Unencodable as err:
                    self.skipped.append(str(err))
        return out


def _dumps(tree: Any) -> str:
    return json.dumps(tree, separators=(",", ":"), allow_nan=False)


class Reuse:
    """JSON texts of immutable values, carried from one `to_json` of a state to the next.

    `immutable` (id → Same(value), from `fingerprint`) names the values vouched never to change in
    place; `to_json` reuses the text it wrote for one of them while it meets the same object again,
    and keeps only the texts of this call's values (so nothing else is held alive)."""

    def __init__(self, immutable: dict[int, Same] | None = None):
        self.immutable: dict[int, Same] = immutable or {}
        self.texts: dict[int, tuple[Any, str]] = {}


def to_json(obj: Any, reuse: Reuse | None = None) -> tuple[str, list[torch.Tensor], list[str]]:
    """(compact JSON text, tensors in key order t0, t1, …, what was skipped). With `reuse`, the
    values it vouches for are encoded once and their text spliced in on later calls."""
    enc = _Encoder(reuse)
    text = _dumps(enc.encode(obj, type(obj).__name__))
    if reuse is None:
        return text, enc.tensors, enc.skipped
    reuse.texts = enc.kept
    if not enc.raw:
        return text, enc.tensors, enc.skipped
    parts, at = [], 0
    for i, m in enumerate(_RAW.finditer(text)):
        if i >= len(enc.raw) or m.group(1) != str(i):   # marker-like text in the data: no splice
            return to_json(obj)
        parts += [text[at:m.start()], enc.raw[i]]
        at = m.end()
    if len(parts) != 2 * len(enc.raw):
        return to_json(obj)
    parts.append(text[at:])
    return "".join(parts), enc.tensors, enc.skipped


# ---- decode ---------------------------------------------------------------------------------

def resolve_class(module: Any, name: Any) -> type:
    """A dataclass of this project by module and name; anything else is refused before import."""
    if not (isinstance(module, str) and isinstance(name, str) and _MODULE.fullmatch(module)
            and module not in _SCRIPTS and name.isidentifier()):
        raise SessionError(f"refused class {module!r}.{name!r}: not a class of this project")
    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError as err:
        raise SessionError(f"class {module}.{name}: {err}") from err
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == module):
        raise SessionError(f"refused {module}.{name}: not a dataclass defined there")
    return cls


READ_ERRORS = (SessionError, KeyError, IndexError, TypeError, ValueError, AttributeError)


class _Decoder:
    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors
        self.problems: list[str] = []
        self._objects: dict[int, Any] = {}

    def decode(self, x: Any, path: str) -> Any:
        if isinstance(x, list):
            return [self.decode(v, f"{path}[{i}]") for i, v in enumerate(x)]
        if not isinstance(x, dict):
            return x
        if "__float__" in x:
            if x["__float__"] not in ("nan", "inf", "-inf"):
                raise SessionError(f"{path}: bad float {x['__float__']!r}")
            return float(x["__float__"])
        if "__tensor__" in x:
            if x["__tensor__"] not in self.tensors:
                raise SessionError(f"{path}: tensor {x['__tensor__']} missing from the tensor file")
            return self.tensors[x["__tensor__"]]
        if "__ndarray__" in x:
            dtype, shape = np.dtype(x["dtype"]), tuple(int(n) for n in x["shape"])
            if x["__ndarray__"] is None:
                return np.array(self.decode(x["items"], path), dtype=dtype).reshape(shape)
            return np.frombuffer(base64.b64decode(x["__ndarray__"]), dtype=dtype).reshape(shape).copy()
        if "__frame__" in x:
            return self._frame(x["__frame__"], path)
        if "__dc__" in x:
            return self._dataclass(x, path)
        if "__ref__" in x:
            if x["__ref__"] not in self._objects:
                raise SessionError(f"{path}: refers to an object that was not read")
            return self._objects[x["__ref__"]]
        if "__tuple__" in x:
            return tuple(self.decode(x["__tuple__"], path))
        if "__set__" in x:
            return set(self.decode(x["__set__"], path))
        if "__dict__" in x:
            return {self.decode(k, path): self.decode(v, path) for k, v in x["__dict__"]}
        return {k: self.decode(v, f"{path}[{k!r}]") for k, v in x.items()}

    def _frame(self, f: dict, path: str) -> pd.DataFrame:
        columns = self.decode(f["columns"], path)
        ix = f["index"]
        index = (pd.RangeIndex(*ix["range"]) if "range" in ix
                 else _typed(pd.Index, self.decode(ix["values"], path), ix["dtype"]))
        index.name = self.decode(f.get("index_name"), path)
        series = [_typed(pd.Series, self.decode(v, path), t) for v, t in zip(f["data"], f["dtypes"])]
        if len(series) != len(columns):
            raise SessionError(f"{path}: {len(columns)} columns but {len(series)} data lists")
        if not series:
            return pd.DataFrame(index=index, columns=pd.Index(columns))
        df = pd.concat(series, axis=1, ignore_index=True)
        df.columns, df.index = columns, index
        return df

    def _dataclass(self, x: dict, path: str) -> Any:
        cls = resolve_class(*x["__dc__"])
        stored, values = x["fields"], {}
        for f in dataclasses.fields(cls):
            if not f.metadata.get(SAVED, True) or f.name not in stored:
                continue
            try:
                values[f.name] = self.decode(stored[f.name], f"{path}.{f.name}")
            except READ_ERRORS as err:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise
                self.problems.append(f"{path}.{f.name} ({err})")
        init = {f.name for f in dataclasses.fields(cls) if f.init}
        obj = cls(**{k: v for k, v in values.items() if k in init})
        for k, v in values.items():
            if k not in init:
                object.__setattr__(obj, k, v)
        self._objects[x["id"]] = obj
        return obj


def _typed(kind, values: list, dtype: str):
    """pd.Series / pd.Index of `values` as `dtype` (inferred when the dtype does not fit)."""
    try:
        return kind(values, dtype=object).astype(dtype)
    except (TypeError, ValueError):
        return kind(values)


def decode(tree: Any, tensors: dict[str, torch.Tensor] | None = None) -> tuple[Any, list[str]]:
    """(object, problems: fields that took their default because they could not be read)."""
    dec = _Decoder(tensors or {})
    obj = dec.decode(tree, "state")
    return obj, dec.problems
