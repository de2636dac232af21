"""The Results and History pages' plumbing: per-edit tables and the files users download.

No math: tables are joins of core's DataFrames; exports call `core.patch`.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

from workbench.state import RunRecord

MODEL_ZIP_LIMIT = 2 * 2**30   # above this the edited model is saved to a folder, not zipped


def batch_status(ledger, batch_id: int) -> str:
    """'applied' / 'reverted' / 'broken', or 'deleted' when the batch left the ledger."""
    from core.errors import WorkbenchError

    try:
        return ledger.get(batch_id).status
    except WorkbenchError:
        return "deleted"


def per_edit_table(run: RunRecord) -> pd.DataFrame:
    """One row per edit: subject, objects, ES/PS/NS before → after, and the method's own numbers."""
    cols = ["ES", "PS", "NS"]
    pre = run.metrics_pre.reset_index(drop=True)
    post = run.metrics_post.reset_index(drop=True)
    out = pre[["subject", "target_true", "target_new"]].copy()
    for c in cols:
        if c in pre:
            out[f"{c} before"] = pre[c]
            out[f"{c} after"] = post[c]
    out["new object top-1 after"] = post["new_top1"].astype(bool)
    extra = [c for c in ("loss", "steps", "delta_norm", "stored") if c in run.result.per_edit]
    if len(run.result.per_edit) == len(out):
        for c in extra:
            out[c] = run.result.per_edit[c].to_numpy()
    return out


def generation_pairs(run: RunRecord, mode: str = "greedy") -> pd.DataFrame:
    """Before/after texts of one generation mode, edited subjects first."""
    g = run.generations
    g = g[g["mode"] == mode]
    return g.sort_values("kind", key=lambda k: k != "subject", kind="stable").reset_index(drop=True)


def patch_bytes(ledger, batch_ids: list[int], mode: str = "per_batch") -> bytes:
    """The patch file of the given batches (see core.patch), as bytes for a download button."""
    from core.patch import export_patch

    with tempfile.TemporaryDirectory() as tmp:
        path = export_patch(ledger, batch_ids, Path(tmp) / "edit.patch.safetensors", mode=mode)
        return path.read_bytes()


def model_size_bytes(handle) -> int:
    return sum(p.numel() * p.element_size() for p in handle.hf.parameters())


def model_zip_bytes(handle, note: dict | None = None) -> bytes:
    """The edited model (save_pretrained + tokenizer) as a zip, for small models."""
    from core.patch import save_edited_model

    buf = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_edited_model(handle, Path(tmp) / "edited-model", note=note)
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(folder.parent))
    return buf.getvalue()


def history_table(ledger, base_hash: str) -> pd.DataFrame:
    """The ledger's batches of this model, newest first, with the headline metrics."""
    df = ledger.table(base_hash)
    if df.empty:
        return df
    keep = [c for c in ("id", "time", "method", "edits", "layers", "subjects", "status",
                        "post_ES", "post_PS", "post_NS", "post_S", "seconds") if c in df]
    return df[keep].sort_values("id", ascending=False).reset_index(drop=True)
