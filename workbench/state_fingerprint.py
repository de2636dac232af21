"""Change detection for saved sessions: `fingerprint` walks a state without encoding it.

Saving runs at the end of every script run, so telling "unchanged" must cost far less than
writing: numbers and strings are compared by type and value, containers item by item, tensors by
identity and in-place version, and values the app replaces but never changes in place
(DataFrames, numpy arrays, frozen dataclasses of such) by identity. `state_codec.to_json` reuses
the JSON text of those values (`state_codec.Reuse`). No streamlit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import torch

from workbench.state_codec import _MAX_DEPTH, SAVED


class Same:
    """A value compared by identity inside a fingerprint (held, so its id cannot be reused)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __eq__(self, other: Any) -> bool:
        return type(other) is Same and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


class _Printer:
    def __init__(self, known: dict[int, Same]):
        self.known = known
        self.immutable: dict[int, Same] = {}

    def of(self, x: Any, depth: int = 0) -> tuple[Any, bool]:
        """(fingerprint, whether x can never change in place)."""
        t = type(x)
        if t is str or x is None:
            return x, True
        if t is float:
            return ("f", x.hex()), True                  # -0.0 ≠ 0.0, NaN = NaN, as written
        if t is int or t is bool:
            return (t, x), True                          # 1, 1.0 and True are written differently
        same = self.known.get(id(x))
        if same is not None and same.obj is x:           # checked before: immutable
            self.immutable[id(x)] = same
            return same, True
        if depth > _MAX_DEPTH:
            return Same(x), False                        # (encode refuses it)
        if isinstance(x, (np.ndarray, pd.DataFrame)):
            return self._fixed(x), True                  # replaced, never changed in place
        if isinstance(x, torch.Tensor):
            return (Same(x), x._version), False
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return self._dataclass(x, depth)
        if isinstance(x, (tuple, frozenset)):
            items = [self.of(v, depth + 1) for v in x]
            tag = "t" if isinstance(x, tuple) else "s"
            return (tag, tuple(p for p, _ in items)), all(i for _, i in items)
        if isinstance(x, (list, set)):
            tag = "l" if isinstance(x, list) else "s"
            return (tag, tuple(self.of(v, depth + 1)[0] for v in x)), False
        if isinstance(x, dict):
            return ("d", tuple((self.of(k, depth + 1)[0], self.of(v, depth + 1)[0])
                               for k, v in x.items())), False
        if x is pd.NA or x is pd.NaT:
            return None, True
        if isinstance(x, np.generic):
            return self.of(x.item(), depth + 1)
        if isinstance(x, str):
            return str.__str__(x), True
        if isinstance(x, (int, float)):                  # subclasses: written as the plain number
            return self.of(float(x) if isinstance(x, float) else int(x), depth + 1)
        return Same(x), False                            # not writable: a new one is still noticed

    def _fixed(self, x: Any) -> Same:
        same = self.immutable[id(x)] = Same(x)
        return same

    def _dataclass(self, x: Any, depth: int) -> tuple[Any, bool]:
        prints, fixed = [], type(x).__dataclass_params__.frozen
        for f in dataclasses.fields(x):
            if f.metadata.get(SAVED, True):
                p, i = self.of(getattr(x, f.name), depth + 1)
                prints.append(p)
                fixed = fixed and i
        if fixed:                                        # frozen, and holds nothing mutable
            return self._fixed(x), True
        return (Same(x), tuple(prints)), False           # identity too: encode shares objects by it


def fingerprint(obj: Any, known: dict[int, Same] | None = None) -> tuple[Any, dict[int, Same]]:
    """(a value equal to an earlier fingerprint exactly when `to_json` would write the same,
    the values found immutable: id → Same(value)).

    Numbers and strings are compared by type and value, containers item by item, dataclasses
    field by field (saved fields only) and by identity, tensors by identity and in-place version.
    DataFrames and numpy arrays are compared by identity: the app replaces results, it never
    changes them in place. A frozen dataclass holding only immutable values is compared by
    identity once checked; pass the previous call's immutable values as `known` to skip checking
    them again. Costs a walk over the state's containers — no encoding."""
    printer = _Printer(known or {})
    return printer.of(obj)[0], printer.immutable
