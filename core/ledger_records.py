"""Ledger rows and reports: the SQLite schema and the plain dataclasses `core.ledger` returns."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from core.errors import WorkbenchError

BATCH_FORMAT = "memit-workbench-batch/1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    created      REAL    NOT NULL,
    model_name   TEXT    NOT NULL,
    base_hash    TEXT    NOT NULL,
    method       TEXT    NOT NULL,
    layers       TEXT    NOT NULL,   -- JSON list[int]
    hparams      TEXT    NOT NULL,   -- JSON
    requests     TEXT    NOT NULL,   -- JSON list of EditRequest.to_dict()
    metrics      TEXT    NOT NULL,   -- JSON
    timings      TEXT    NOT NULL,   -- JSON
    layer_hashes TEXT    NOT NULL,   -- JSON {layer: {"before": h, "after": h}}
    file_hash    TEXT    NOT NULL,   -- blake2b of batches/<id>.safetensors
    file_size    INTEGER NOT NULL,
    status       TEXT    NOT NULL,   -- applied | reverted | broken
    revert_info  TEXT                -- JSON RevertReport of the last undo/revert
);
"""
JSON_COLUMNS = ("layers", "hparams", "requests", "metrics", "timings", "layer_hashes", "revert_info")


def dumps_column(obj) -> str:
    """JSON for a column: numpy/torch scalars become numbers, anything else unknown a string."""
    return json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o))


class LedgerError(WorkbenchError):
    """The ledger cannot do what was asked (damaged batch file, nothing to undo, wrong model)."""


@dataclass
class BatchRecord:
    """One row of the ledger."""

    id: int
    created: float
    model_name: str
    base_hash: str
    method: str
    layers: list[int]
    hparams: dict
    requests: list[dict]
    metrics: dict
    timings: dict
    layer_hashes: dict[int, dict[str, str]]
    file_hash: str
    file_size: int
    status: str
    revert_info: dict | None = None

    @property
    def n_edits(self) -> int:
        return len(self.requests)

    def summary(self) -> dict:
        """A flat row for tables (`workbench session list`, the app's history)."""
        subjects = [r.get("subject", "") for r in self.requests]
        return {
            "id": self.id, "time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.created)),
            "model": self.model_name, "base_hash": self.base_hash[:12], "method": self.method,
            "layers": ",".join(str(x) for x in self.layers), "edits": self.n_edits,
            "subjects": ", ".join(subjects[:3]) + (" …" if len(subjects) > 3 else ""),
            "status": self.status, **{k: v for k, v in self.metrics.items() if isinstance(v, (int, float))},
            "seconds": round(sum(self.timings.values()), 2) if self.timings else None,
        }


@dataclass
class RevertReport:
    """What an undo / revert did. `drift_*`: deviation from exact restoration, per layer."""

    batch_id: int
    exact: bool
    how: str                                   # restore | subtract | ledger-only
    drift_max_abs: dict[int, float] = field(default_factory=dict)
    drift_rel: dict[int, float] = field(default_factory=dict)

    @property
    def max_drift(self) -> float:
        return max(self.drift_max_abs.values(), default=0.0)

    def to_dict(self) -> dict:
        return {"batch_id": self.batch_id, "exact": self.exact, "how": self.how,
                "drift_max_abs": {str(k): v for k, v in self.drift_max_abs.items()},
                "drift_rel": {str(k): v for k, v in self.drift_rel.items()}}


@dataclass
class ReplayReport:
    """Which batches `replay` applied and whether the result matches the recorded weights."""

    batch_ids: list[int]
    layers: list[int]
    matches_recorded: bool | None   # None when an inexact revert makes the record incomparable
