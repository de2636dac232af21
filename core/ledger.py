"""The edit ledger: an editing session that survives restarts, with undo, revert and replay.

A workspace folder (`core.paths.workspace_dir`) holds

    ledger.sqlite                one row per applied batch: time, model name + base weights hash,
                                 method, hparams, requests, metrics, timings, layer hashes, status
    batches/<id>.safetensors     that batch's ΔW per layer (`delta.<l>`, fp32, stored layout) and
                                 the bit-exact weights of those layers before it (`before.<l>`)
    base/<base_hash>/<l>.safetensors   the unedited weights of every layer a session touched

Consistency under crashes: a batch is written inside one SQLite write transaction — row
inserted, file written to a temporary name, fsynced, renamed, directory fsynced, then COMMIT.
A kill before COMMIT leaves no row (SQLite rolls back) and at most an orphan file, which the
next `Ledger(...)` removes; a committed row always has its complete file. Writers serialise on
SQLite's write lock (WAL journal), so threads and processes can share a workspace.

Model state: the live model of a session equals `replay` of its applied batches onto the base
model. Undo of the last batch restores the stored `before` weights (bit-exact); reverting an
earlier batch subtracts its ΔW and reports the drift from the exact state (the base weights
plus the remaining batches, re-applied in order).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from core.errors import BadInputError
from core.ledger_io import (
    add_delta, digest, drift_stats, layer_hash, live_weights, read_layer_hashes, set_weights, write_atomic,
)
from core.ledger_records import (
    BATCH_FORMAT, JSON_COLUMNS, SCHEMA, BatchRecord, LedgerError, ReplayReport, RevertReport, dumps_column,
)
from core.paths import workspace_dir

__all__ = ["BatchRecord", "Ledger", "LedgerError", "ReplayReport", "RevertReport"]

class Ledger:
    """The edit history of one workspace. Thread-safe; several processes may share a workspace."""

    def __init__(self, workspace: str | os.PathLike | None = None, *, create: bool = True):
        """Open (create=True: create when missing) the ledger of a workspace folder."""
        self.root = workspace_dir(workspace, create=create)
        self.db_path = self.root / "ledger.sqlite"
        self.batch_dir = self.root / "batches"
        self.base_dir = self.root / "base"
        self.batch_dir.mkdir(exist_ok=True)
        self.base_dir.mkdir(exist_ok=True)
        self._lock = threading.RLock()
        try:
            with self._connect() as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"the ledger database {self.db_path} is damaged or not a ledger ({e}). To start "
                              f"a new history, move the workspace folder {self.root} aside (its batch files "
                              "belong to that database) or use another workspace") from None
        self.recovered = self._recover()

    # ---- storage plumbing -------------------------------------------------------------------
    @contextmanager
    def _connect(self):
        conn = sqlite3.connect(self.db_path, timeout=120, isolation_level=None)
        conn.execute("PRAGMA synchronous=FULL")
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self):
        """One write transaction holding SQLite's write lock (BEGIN IMMEDIATE) and ours."""
        with self._lock, self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def batch_path(self, batch_id: int) -> Path:
        return self.batch_dir / f"{int(batch_id)}.safetensors"

    def _recover(self) -> dict:
        """Remove files no committed row owns; mark applied rows whose file is gone or short 'broken'."""
        removed, broken = [], []
        with self._write() as conn:
            rows = {r[0]: r[1] for r in conn.execute("SELECT id, file_size FROM batches WHERE status = 'applied'")}
            known = {r[0] for r in conn.execute("SELECT id FROM batches")}
            for folder in [self.batch_dir, *[p for p in self.base_dir.iterdir() if p.is_dir()]]:
                for p in folder.iterdir():
                    orphan = p.name.endswith(".tmp") or (
                        folder == self.batch_dir and (not p.stem.isdigit() or int(p.stem) not in known))
                    if orphan:
                        p.unlink(missing_ok=True)
                        removed.append(p.name)
            for bid, size in rows.items():
                path = self.batch_path(bid)
                if not path.exists() or path.stat().st_size != size:
                    conn.execute("UPDATE batches SET status='broken' WHERE id=?", (bid,))
                    broken.append(bid)
        return {"removed_files": removed, "broken_batches": broken}

    @staticmethod
    def _row(cursor, row) -> BatchRecord:
        d = {col[0]: val for col, val in zip(cursor.description, row)}
        for k in JSON_COLUMNS:
            d[k] = json.loads(d[k]) if d[k] is not None else None
        d["layer_hashes"] = {int(k): v for k, v in d["layer_hashes"].items()}
        return BatchRecord(**d)

    # ---- reading ----------------------------------------------------------------------------
    def batches(self, base_hash: str | None = None, status: str | None = None) -> list[BatchRecord]:
        """All batches in id order, optionally of one base model and/or one status."""
        sql, args = "SELECT * FROM batches WHERE 1=1", []
        if base_hash:
            sql, args = sql + " AND base_hash=?", [*args, base_hash]
        if status:
            sql, args = sql + " AND status=?", [*args, status]
        with self._lock, self._connect() as conn:
            cur = conn.execute(sql + " ORDER BY id", args)
            return [self._row(cur, r) for r in cur.fetchall()]

    def get(self, batch_id: int) -> BatchRecord:
        with self._lock, self._connect() as conn:
            cur = conn.execute("SELECT * FROM batches WHERE id=?", (int(batch_id),))
            row = cur.fetchone()
            if row is None:
                raise BadInputError(f"no batch {batch_id} in {self.root}", field="batch_id")
            return self._row(cur, row)

    def table(self, base_hash: str | None = None) -> pd.DataFrame:
        """The history as a DataFrame, one row per batch."""
        return pd.DataFrame([b.summary() for b in self.batches(base_hash)])

    def load_tensors(self, batch_id: int) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """(deltas, before) of a batch, after checking the file against its recorded hash."""
        rec = self.get(batch_id)
        path = self.batch_path(batch_id)
        payload = path.read_bytes() if path.exists() else b""
        if rec.status == "broken" or digest(payload) != rec.file_hash:
            raise LedgerError(f"batch {batch_id}: its file {path} is missing or damaged; "
                              f"delete the batch (workbench session delete {batch_id}) to go on without it")
        tensors = st_load(payload)
        deltas = {int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("delta.")}
        before = {int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("before.")}
        return deltas, before

    def base_weights(self, base_hash: str, layer: int) -> torch.Tensor | None:
        path = self.base_dir / base_hash / f"{int(layer)}.safetensors"
        return st_load(path.read_bytes())["weight"] if path.exists() else None

    # ---- writing ----------------------------------------------------------------------------
    def write_batch(self, *, model_name: str, base_hash: str, method: str, hparams: dict,
                    requests: list[dict], metrics: dict, timings: dict,
                    deltas: dict[int, torch.Tensor], before: dict[int, torch.Tensor],
                    after_hashes: dict[int, str]) -> BatchRecord:
        """Store one batch atomically (row + file, or neither). Tensors in the stored layout."""
        layers = sorted(int(x) for x in deltas)
        if set(layers) != {int(x) for x in before} or set(layers) != {int(x) for x in after_hashes}:
            raise BadInputError("deltas, before and after_hashes must cover the same layers", field="layers")
        tensors = {}
        for layer in layers:
            tensors[f"delta.{layer}"] = deltas[layer].detach().to("cpu", torch.float32).contiguous()
            tensors[f"before.{layer}"] = before[layer].detach().cpu().contiguous()
        payload = st_save(tensors, metadata={"format": BATCH_FORMAT, "base_hash": base_hash, "method": method})
        hashes = {str(lay): {"before": layer_hash(before[lay]), "after": after_hashes[lay]} for lay in layers}
        row = (time.time(), model_name, base_hash, method, dumps_column(layers), dumps_column(hparams),
               dumps_column(requests), dumps_column(metrics), dumps_column(timings), dumps_column(hashes),
               digest(payload), len(payload), "applied")
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO batches (created, model_name, base_hash, method, layers, hparams, requests,"
                " metrics, timings, layer_hashes, file_hash, file_size, status)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
            batch_id = int(cur.lastrowid)
            path = self.batch_path(batch_id)
            try:
                write_atomic(path, payload)
                self._store_base(base_hash, before)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        return self.get(batch_id)

    def _store_base(self, base_hash: str, before: dict[int, torch.Tensor]) -> None:
        """Keep the unedited weights of each layer the first time a session touches it."""
        folder = self.base_dir / base_hash
        folder.mkdir(exist_ok=True)
        for layer, w in before.items():
            path = folder / f"{int(layer)}.safetensors"
            if not path.exists():
                write_atomic(path, st_save({"weight": w.detach().cpu().contiguous()}))

    def record(self, handle, applied, metrics: dict | None = None) -> BatchRecord:
        """Record an applied edit (`core.editing.AppliedEdit`) of `handle` as the next batch."""
        result = applied.result
        with handle.lock:
            after = read_layer_hashes(handle, result.deltas)
        return self.write_batch(
            model_name=handle.name, base_hash=handle.base_hash, method=result.method,
            hparams=dict(result.hparams), requests=[r.to_dict() for r in result.requests],
            metrics=dict(metrics or {}), timings=dict(result.timings), deltas=result.deltas,
            before=applied.originals, after_hashes=after)

    def apply_and_record(self, handle, result, metrics: dict | None = None):
        """Apply an EditResult and record it, as one step: if recording fails the edit is undone."""
        from core.editing import apply_edit, revert

        with handle.lock:
            applied = apply_edit(handle, result)
            try:
                record = self.record(handle, applied, metrics)
            except BaseException:
                revert(handle, applied)
                raise
        return applied, record

    def _set_status(self, batch_id: int, status: str, info: dict | None) -> None:
        with self._write() as conn:
            conn.execute("UPDATE batches SET status=?, revert_info=? WHERE id=?",
                         (status, dumps_column(info) if info is not None else None, int(batch_id)))

    def update_metrics(self, batch_id: int, metrics: dict) -> None:
        with self._write() as conn:
            conn.execute("UPDATE batches SET metrics=? WHERE id=?", (dumps_column(metrics), int(batch_id)))

    # ---- undo / revert / replay / delete ---------------------------------------------------
    def last_applied(self, base_hash: str | None = None) -> BatchRecord:
        applied = self.batches(base_hash, status="applied")
        if not applied:
            raise LedgerError("nothing to undo: no applied batch in this workspace"
                              + (" for this model" if base_hash else ""))
        return applied[-1]

    def undo(self, handle=None) -> RevertReport:
        """Revert the last applied batch (of `handle`'s base model when a handle is given)."""
        return self.revert(self.last_applied(handle.base_hash if handle else None).id, handle)

    def exact_state(self, base_hash: str, layers, excluding: int | None = None) -> dict[int, torch.Tensor]:
        """Weights of `layers` as replay gives them: base + applied batches (except one), in order."""
        state = {}
        for layer in layers:
            base = self.base_weights(base_hash, layer)
            if base is None:
                raise LedgerError(f"the base weights of layer {layer} are missing from {self.base_dir}")
            state[layer] = base
        for rec in self.batches(base_hash, status="applied"):
            if rec.id == excluding or not set(rec.layers) & set(state):
                continue
            deltas, _ = self.load_tensors(rec.id)
            for layer in set(rec.layers) & set(state):
                state[layer] = add_delta(state[layer], deltas[layer])
        return state

    def revert(self, batch_id: int, handle=None) -> RevertReport:
        """Take one applied batch out of the session.

        With a handle: the last batch of its layers, with the model still in the recorded state,
        gets its `before` weights back (bit-exact); otherwise ΔW is subtracted and the drift
        from the exact state (base + remaining batches) is reported per layer.
        Without a handle only the ledger changes (the CLI rebuilds the model by replay).
        """
        rec = self.get(batch_id)
        if rec.status != "applied":
            raise BadInputError(f"batch {batch_id} is {rec.status}, not applied", field="batch_id")
        if handle is None:
            report = RevertReport(rec.id, exact=True, how="ledger-only")
            self._set_status(rec.id, "reverted", report.to_dict())
            return report
        if handle.base_hash != rec.base_hash:
            raise LedgerError(f"batch {batch_id} was made on model {rec.base_hash[:12]}, "
                              f"the loaded model is {handle.base_hash[:12]}")
        deltas, before = self.load_tensors(rec.id)
        later = [b for b in self.batches(rec.base_hash, status="applied")
                 if b.id > rec.id and set(b.layers) & set(rec.layers)]
        with handle.lock:
            live_hashes = read_layer_hashes(handle, rec.layers)
            if not later and all(live_hashes[x] == rec.layer_hashes[x]["after"] for x in rec.layers):
                set_weights(handle, before)
                report = RevertReport(rec.id, exact=True, how="restore",
                                      drift_max_abs={x: 0.0 for x in rec.layers},
                                      drift_rel={x: 0.0 for x in rec.layers})
            else:
                new = {x: add_delta(w, deltas[x], sign=-1) for x, w in live_weights(handle, rec.layers).items()}
                exact = self.exact_state(rec.base_hash, rec.layers, excluding=rec.id)
                stats = {x: drift_stats(new[x], exact[x]) for x in rec.layers}
                set_weights(handle, new)
                report = RevertReport(rec.id, exact=all(s[0] == 0.0 for s in stats.values()), how="subtract",
                                      drift_max_abs={x: s[0] for x, s in stats.items()},
                                      drift_rel={x: s[1] for x, s in stats.items()})
        self._set_status(rec.id, "reverted", report.to_dict())
        return report

    def replay(self, handle, *, base_hash: str | None = None, force: bool = False,
               progress=None) -> ReplayReport:
        """Apply a session's applied batches, in order, to a freshly loaded model.

        The session is that of `handle`'s base model, or of `base_hash`. Refused unless `force`:
        a session made on other weights, and a model whose edited layers are not at their
        unedited weights (replaying twice would apply every batch twice).
        """
        source = base_hash or handle.base_hash
        if source != handle.base_hash and not force:
            raise LedgerError(f"the session was recorded on model weights {source[:12]}, the loaded model "
                              f"is {handle.base_hash[:12]}; pass force to replay it anyway")
        history = self.batches(source)
        broken = [b.id for b in history if b.status == "broken"]
        if broken:
            raise LedgerError(f"batch(es) {broken} of this session are missing or damaged; delete them "
                              "(workbench session delete ID) to replay the rest")
        session = [b for b in history if b.status == "applied"]
        if not force:
            self._check_unedited(handle, source, {x for b in session for x in b.layers})
        touched: dict[int, BatchRecord] = {}
        for i, rec in enumerate(session):
            deltas, _ = self.load_tensors(rec.id)
            with handle.lock:
                current = live_weights(handle, rec.layers)
                set_weights(handle, {x: add_delta(current[x], deltas[x]) for x in rec.layers})
            touched.update({x: rec for x in rec.layers})
            if progress:
                progress(i + 1, len(session), "replay")
        # The recorded after-hash of a layer's last batch still describes the exact state unless an
        # earlier batch on that layer has been taken out since.
        comparable = {x: rec for x, rec in touched.items()
                      if not any(b.status == "reverted" and b.id < rec.id and x in b.layers for b in history)}
        matches = None
        if comparable and source == handle.base_hash:
            with handle.lock:
                live = read_layer_hashes(handle, list(comparable))
            matches = all(live[x] == rec.layer_hashes[x]["after"] for x, rec in comparable.items())
        return ReplayReport([b.id for b in session], sorted(touched), matches)

    def _check_unedited(self, handle, base_hash: str, layers) -> None:
        """Refuse to replay onto a model whose layers are not at the session's base weights."""
        with handle.lock:
            live = read_layer_hashes(handle, layers)
        for layer in sorted(layers):
            base = self.base_weights(base_hash, layer)
            if base is not None and layer_hash(base) != live[layer]:
                raise LedgerError(f"layer {layer} of the loaded model is not at its unedited weights "
                                  "(already replayed or edited?); replay onto a freshly loaded model")

    def delete(self, batch_id: int, handle=None) -> RevertReport | None:
        """Remove a batch from the history (reverting it first if it is applied)."""
        rec = self.get(batch_id)
        report = self.revert(rec.id, handle) if rec.status == "applied" else None
        with self._write() as conn:
            conn.execute("DELETE FROM batches WHERE id=?", (rec.id,))
        self.batch_path(rec.id).unlink(missing_ok=True)
        return report
