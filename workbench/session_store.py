"""A session's state on disk: `<folder>/state.json` + `tensors.safetensors` (+ `summary.json`).

The state is encoded by `workbench.state_codec` (project dataclasses, containers, numbers,
numpy arrays, DataFrames; tensors go to the safetensors file by key); a value it cannot write
drops its field (logged), a field it cannot read takes its default (reported).

Writes are atomic (`core.ledger_io.write_atomic`) and happen only when something changed. `save`
runs after every script run, so it first compares the state's `fingerprint` with the one of the
last write (its `Mark`): a walk over the state, no encoding. Only when that differs is the state
encoded — the JSON text of unchanged DataFrames, arrays and requests reused from the last write —
and written if its JSON differs; the tensor file is rewritten only when the set of tensors
changed (identity and in-place version of each). No streamlit, no pickle.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from core.ledger_io import write_atomic
from workbench.state_codec import READ_ERRORS, Reuse, SessionError, decode, fingerprint, to_json

LOG = logging.getLogger("workbench.session_store")
FORMAT = 1
STATE_FILE, TENSOR_FILE, SUMMARY_FILE = "state.json", "tensors.safetensors", "summary.json"
ID_LENGTH = 12
_ID = re.compile(rf"[0-9a-f]{{{ID_LENGTH}}}\Z")


def new_id() -> str:
    return uuid.uuid4().hex[:ID_LENGTH]


def valid_id(value: Any) -> bool:
    """Hex of the fixed length — checked before any id is used as a folder name."""
    return isinstance(value, str) and bool(_ID.fullmatch(value))


@dataclass(frozen=True, eq=False)
class Mark:
    """What the folder holds now — the state's JSON, which tensors its tensor file has — and what
    makes the next comparison cheap (the state's fingerprint, the JSON texts to reuse)."""

    skeleton: str
    tensor_sig: tuple
    token: str | None                     # id of the tensor file written (None: no tensor file)
    fingerprint: Any = None               # state_codec.fingerprint of the state written
    reuse: Reuse = field(default_factory=Reuse)


# ---- files ----------------------------------------------------------------------------------

def _tensor_sig(tensors: list[torch.Tensor]) -> tuple:
    """Which tensors, by identity and in-place version: cheap, and changes when one is modified."""
    return tuple((id(t), t._version, tuple(t.shape), str(t.dtype), str(t.device)) for t in tensors)


def mark(obj: Any, token: str | None = None) -> Mark:
    """The Mark of `obj` as if it had just been saved (a fresh or just-loaded state)."""
    fp, immutable = fingerprint(obj)
    reuse = Reuse(immutable)
    skeleton, tensors, _ = to_json(obj, reuse)
    return Mark(skeleton, _tensor_sig(tensors), token, fp, reuse)


def save(obj: Any, folder: Path, last: Mark | None = None, summary: dict | None = None) -> Mark:
    """Write `obj` to `folder` unless it equals `last` (what the folder holds); returns the new Mark."""
    from safetensors.torch import save as safetensors_bytes

    fp, immutable = fingerprint(obj, last.reuse.immutable if last is not None else None)
    if last is not None and last.fingerprint == fp:
        return last                                        # unchanged: nothing encoded
    reuse = last.reuse if last is not None else Reuse()
    reuse.immutable = immutable
    skeleton, tensors, skipped = to_json(obj, reuse)
    sig = _tensor_sig(tensors)
    if last is not None and last.skeleton == skeleton and last.tensor_sig == sig:
        return replace(last, fingerprint=fp)              # new objects, same content
    for what in skipped:
        LOG.warning("session not saved in full: %s cannot be written", what)
    folder.mkdir(parents=True, exist_ok=True)
    token = last.token if last is not None and last.tensor_sig == sig else None
    if tensors and token is None:
        token = uuid.uuid4().hex
        named = {f"t{i}": t.detach().to("cpu").contiguous().clone() for i, t in enumerate(tensors)}
        write_atomic(folder / TENSOR_FILE, safetensors_bytes(named, metadata={"token": token}))
    saved_at = time.time()
    text = f'{{"format":{FORMAT},"saved_at":{saved_at},"tensors":{json.dumps(token)},"state":{skeleton}}}'
    write_atomic(folder / STATE_FILE, text.encode("utf-8"))
    if not tensors:
        (folder / TENSOR_FILE).unlink(missing_ok=True)
    if summary is not None:
        text = json.dumps({**summary, "saved_at": saved_at})
        write_atomic(folder / SUMMARY_FILE, text.encode("utf-8"))
    return Mark(skeleton, sig, token, fp, reuse)


@dataclass
class Loaded:
    obj: Any
    problems: list[str]                  # fields that came back as their default, with why
    mark: Mark


def _read_tensors(folder: Path, token: str | None) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    if token is None:
        return {}
    with safe_open(str(folder / TENSOR_FILE), framework="pt") as f:
        if (f.metadata() or {}).get("token") != token:
            raise SessionError(f"{TENSOR_FILE} is from another save than {STATE_FILE}")
        return {k: f.get_tensor(k) for k in f.keys()}


def load(folder: Path, expected: type) -> Loaded:
    """The object saved in `folder`; raises SessionError when it cannot be read at all."""
    try:
        data = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SessionError(f"{STATE_FILE} is not a session file of format {FORMAT}")
        problems = []
        try:
            tensors = _read_tensors(folder, data.get("tensors"))
        except Exception as err:  # noqa: BLE001 (OSError, SessionError, safetensors' own errors)
            tensors, problems = {}, [f"tensors ({err})"]
        obj, more = decode(data["state"], tensors)
    except SessionError:
        raise
    except (OSError, RecursionError, *READ_ERRORS) as err:
        raise SessionError(f"{type(err).__name__}: {err}") from err
    if not isinstance(obj, expected):
        raise SessionError(f"{STATE_FILE} holds a {type(obj).__name__}, not a {expected.__name__}")
    return Loaded(obj, problems + more, mark(obj, data.get("tensors")))


def read_field(folder: Path, name: str, default: Any = None) -> Any:
    """One top-level field of the saved object (no tensors), or `default` when unreadable."""
    try:
        data = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        return decode(data["state"]["fields"][name])[0]
    except (OSError, RecursionError, *READ_ERRORS):
        return default


def list_sessions(root: Path, limit: int | None = None) -> list[tuple[str, float, dict]]:
    """Saved sessions under `root`, most recent first: (id, mtime of its state, its summary)."""
    found = []
    try:
        entries = [e for e in os.scandir(root) if valid_id(e.name)]
    except OSError:
        return []
    for entry in entries:
        try:
            found.append((entry.name, os.stat(Path(entry.path) / STATE_FILE).st_mtime))
        except OSError:
            continue
    found.sort(key=lambda e: e[1], reverse=True)
    out = []
    for sid, when in found[:limit]:
        try:
            summary = json.loads((root / sid / SUMMARY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            summary = {}
        out.append((sid, when, summary if isinstance(summary, dict) else {}))
    return out
