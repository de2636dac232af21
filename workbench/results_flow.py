"""The Results and History pages' plumbing: per-edit tables and the files users download.

No math: tables are joins of core's DataFrames; exports call `core.patch`.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

from core.patch import MB, format_size
from workbench.charts.scaling import METHOD_STYLE, REFERENCE
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


# Method names as the charts' legends show them (one source: the charts' METHOD_STYLE).
METHOD_NAMES = {k: v["name"] for k, v in METHOD_STYLE.items() if k != REFERENCE}


def with_method_names(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of a table whose `method` column reads MEMIT / ROME / FT-W (not memit / rome / ft),
    for display; 'unedited' and unknown names stay as they are."""
    if "method" not in df:
        return df
    out = df.copy()
    out["method"] = [METHOD_NAMES.get(m, m) for m in out["method"]]
    return out


def history_table(ledger, base_hash: str) -> pd.DataFrame:
    """The ledger's batches of this model, newest first, with the headline metrics."""
    df = ledger.table(base_hash)
    if df.empty:
        return df
    keep = [c for c in ("id", "time", "method", "edits", "layers", "subjects", "status",
                        "post_ES", "post_PS", "post_NS", "post_S", "seconds") if c in df]
    return with_method_names(df[keep].sort_values("id", ascending=False).reset_index(drop=True))


def reupload_note(size: int, sum_size: int | None, server_mb: int, model_mb: int) -> str | None:
    """What to do when an export of `size` bytes of ΔW (`sum_size` as sum) could not be uploaded
    again on the History page, whose uploader takes min(server_mb, model_mb) MB (the server's
    `--max-patch-mb`, the model's `core.patch.patch_size_limit`); None when it could."""
    upload_mb = min(server_mb, model_mb)
    if size + MB <= upload_mb * MB:          # ΔW plus up to 1 MB of manifest
        return None
    fits = sum_size is not None and sum_size + MB <= upload_mb * MB
    as_sum = f" or as sum ({format_size(sum_size)})" if fits else ""
    if size > model_mb * MB:
        return (f"This patch holds {format_size(size)} of ΔW, more than a patch for this model may hold "
                f"({model_mb} MB): neither this page nor `workbench session apply` would take it back. "
                f"Export fewer batches{as_sum}.")
    return (f"This patch holds {format_size(size)} of ΔW, more than this app accepts as an upload ({server_mb} "
            f"MB, `workbench app --max-patch-mb`). Apply it with `workbench session apply FILE`, start the "
            f"app with `--max-patch-mb {model_mb}`, or export fewer batches{as_sum}.")


def history_signature(table: pd.DataFrame) -> tuple:
    """(id, status) of every batch in the History table: it changes when a batch is added,
    undone, reverted or deleted, and then the History page's pickers start again from the
    batches applied now."""
    if table.empty:
        return ()
    return tuple(zip(table["id"].astype(int).tolist(), table["status"].astype(str).tolist()))


def batch_label(table: pd.DataFrame, batch_id: int, subjects: bool = True) -> str:
    """'3 · FT-W · 10 edit(s) · Julia Kay Chatgate, …' for a picker of batches (without the
    subjects for the chips of a multiselect)."""
    row = table[table["id"] == batch_id]
    if row.empty:
        return str(batch_id)
    r = row.iloc[0]
    parts = [str(batch_id)]
    if "method" in r:
        parts.append(str(r["method"]))
    if "edits" in r:
        parts.append(f"{r['edits']} edit(s)")
    if subjects and "subjects" in r and isinstance(r["subjects"], str) and r["subjects"]:
        subj = r["subjects"]
        parts.append(subj if len(subj) <= 40 else subj[:39] + "…")
    return " · ".join(parts)


# ---- table headers for people -------------------------------------------------------------------

METRIC_HELP = {
    "method": ("method", "MEMIT, ROME or FT-W; 'unedited' is the model as it is now, before this "
               "run's edits (a reference row)."),
    "n": ("edits", "Edits made at once."),
    "ES": ("ES %", "Efficacy success: share of edits where the new object beats the true one on "
           "the edit prompt (Appendix C)."),
    "PS": ("PS %", "Paraphrase success: the same on paraphrases of the edit prompt (generalisation)."),
    "NS": ("NS %", "Neighbourhood success: share of prompts about other subjects where the true "
           "object still wins (specificity)."),
    "S": ("Score %", "Harmonic mean of ES, PS and NS."),
    "GE": ("GE bits", "Generation entropy: n-gram entropy of sampled text about edited subjects "
           "(fluency; it drops when text repeats)."),
    "RS": ("RS", "Reference score: consistency of generated text with reference texts about the "
           "new object (n/a where the dataset has none, as in the demo world)."),
    "EM": ("EM", "Efficacy magnitude: mean P(new) − P(true) on the edit prompt, in points."),
    "PM": ("PM", "Paraphrase magnitude: the same on paraphrases."),
    "NM": ("NM", "Neighbourhood magnitude: mean P(true) − P(new) on neighbour prompts."),
    "NS_outside": ("NS outside %", "NS over neighbour prompts about subjects the batch does not "
                   "edit at all."),
    "seconds": ("seconds", "Wall time of the edit and its metrics."),
    "delta_norm": ("‖ΔW‖", "Frobenius norm of the weight change (largest layer)."),
    "relative_norm": ("‖ΔW‖/‖W‖", "The change relative to the layer's own weights."),
    "stored": ("stored %", "MEMIT: the median share of its change an edit kept in the most "
               "crowded layer of R, in percent (the Results page's per-edit 'stored' as a fraction)."),
    "layers": ("layers", "The layers edited."),
    "neighbours_excluded": ("neighbours left out", "Neighbour prompts about subjects the batch "
                            "edits under the same relation, left out of NS (their true object "
                            "changes on purpose)."),
}


def metric_columns(columns) -> dict:
    """st.dataframe column_config for a comparison / scaling table: readable labels, tooltips."""
    import streamlit as st

    out = {}
    for c in columns:
        if c not in METRIC_HELP:
            continue
        label, tip = METRIC_HELP[c]
        if c in ("method", "layers"):
            out[c] = st.column_config.TextColumn(label, help=tip)
        else:
            out[c] = st.column_config.NumberColumn(label, help=tip, format="%.3g" if c in (
                "delta_norm", "relative_norm", "stored") else "%.1f" if c not in ("n", "neighbours_excluded") else "%d")
    return out

