"""History: the edit ledger of this model — undo, revert, export and apply patches."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import streamlit as st

from core.patch import MB, apply_patch, export_size, patch_size_limit
from workbench import loader, results_flow, state, ui


s = state.get()
handle = ui.require_handle(s)
ledger = loader.get_ledger()
st.title("History")
st.caption(f"Every applied batch is recorded in the workspace ({ui.escape_md(ledger.root)}) with its ΔW, so the "
           "history — and the model's state — survive a browser reload and an app restart.")
st.markdown(f"**Edit state:** {ui.edit_state_text(handle)}")
# A patch is accepted up to the model's limit (core.patch.patch_size_limit, as in `workbench
# session apply`), and the server takes no upload above `workbench app --max-patch-mb`.
server_mb = int(st.get_option("server.maxUploadSize"))
model_mb = math.ceil(patch_size_limit(handle) / MB)
upload_mb = min(server_mb, model_mb)
if s.flash:
    st.success(s.flash, icon=":material/check_circle:")
    s.flash = None

table = results_flow.history_table(ledger, handle.base_hash)
# The pickers below start again from the batches applied now whenever a batch is added, undone,
# reverted or deleted (a kept selection would export batches that are no longer applied).
signature = results_flow.history_signature(table)
if st.session_state.get("history_signature") != signature:
    st.session_state["history_signature"] = signature
    st.session_state["export_pick"] = table[table["status"] == "applied"]["id"].tolist() if len(table) else []
    st.session_state.pop("revert_pick", None)
if table.empty:
    ui.empty_state("No batches yet for this model. Run an edit on the Edit page, or apply a patch "
                   "below.", "edit", "Go to Edit facts")
else:
    after = {f"post_{k}": st.column_config.NumberColumn(f"{label} after", format="%.1f", help=tip)
             for k, (label, tip) in ((k, results_flow.METRIC_HELP[k]) for k in ("ES", "PS", "NS", "S"))}
    st.dataframe(table, hide_index=True, key="history_table", width="stretch",
                 column_config={**after, "subjects": st.column_config.TextColumn("subjects", width="medium")})
    applied = table[table["status"] == "applied"]["id"].tolist()
    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Undo the last batch**")
        st.caption("Restores the weights saved before it, bit for bit — unless an earlier batch "
                   "was reverted since (then its ΔW is subtracted and the drift is reported).")
        if st.button("Undo last batch", key="undo", disabled=not applied, type="primary"):
            with ui.guard("Undo"):
                report = ledger.undo(handle)
                s.flash = (f"Batch {report.batch_id} undone, bit-exact." if report.exact else
                           f"Batch {report.batch_id} undone by subtracting its ΔW: the weights differ "
                           f"from an exact replay by at most {report.max_drift:.2e} (rounding).")
                st.rerun()
    with c2:
        st.markdown("**Revert an earlier batch**")
        st.caption("Subtracts its ΔW; the drift from an exact replay is reported.")
        pick = st.selectbox("Batch", applied, key="revert_pick", disabled=not applied,
                            format_func=lambda i: results_flow.batch_label(table, i))
        if st.button("Revert batch", key="revert", disabled=not applied):
            with ui.guard("Revert"):
                report = ledger.revert(int(pick), handle)
                s.flash = (
                    f"Batch {report.batch_id} reverted ({report.how}); largest weight drift "
                    f"{report.max_drift:.2e}.")
                st.rerun()
    st.subheader("Export a patch")
    chosen = st.multiselect("Batches", table["id"].tolist(), key="export_pick",
                            format_func=lambda i: results_flow.batch_label(table, i, subjects=False),
                            help="The ΔW of these batches and a manifest (base model hash, method, "
                            "hyperparameters, requests) in one safetensors file. Starts from the "
                            "batches applied now.")
    mode = st.radio("Mode", ["per_batch", "sum"], horizontal=True, key="export_mode",
                    format_func={"per_batch": "one ΔW per batch", "sum": "summed ΔW per layer"}.get,
                    help="One ΔW per batch re-applies exactly as recorded (and can be undone batch "
                    "by batch); summed adds one ΔW per layer (smaller file, one batch when applied).")
    if chosen:
        note = results_flow.reupload_note(
            export_size(handle, ledger, chosen, mode),
            export_size(handle, ledger, chosen, "sum") if mode == "per_batch" else None, server_mb, model_mb)
        if note:
            st.warning(note, icon=":material/warning:")
        st.download_button("Download patch", lambda: results_flow.patch_bytes(ledger, chosen, mode),
                           file_name="session.patch.safetensors", key="dl_session_patch",
                           on_click="ignore", icon=":material/download:")

st.subheader("Apply a patch")
# A new uploader after each applied patch: the file just applied is gone from it, so a second
# click cannot apply the same patch twice.
up = st.file_uploader("Patch file (.safetensors)", type=["safetensors"],
                      key=f"patch_upload_{st.session_state.get('patch_uploads', 0)}",
                      max_upload_size=upload_mb,
                      help=f"Made by the workbench for the same base model; refused otherwise. At most "
                      f"{upload_mb} MB.")
if server_mb < model_mb:
    st.caption(f"This app accepts patches up to {server_mb} MB (`workbench app --max-patch-mb`); a patch "
               f"for this model may be up to {model_mb} MB. Apply a larger one with `workbench session "
               f"apply FILE`, or start the app with `--max-patch-mb {model_mb}`.")
force = st.checkbox("Apply even if it was made for other base weights", key="patch_force",
                    help="Only if you know the models are compatible: a wrong patch corrupts the model.")
if up is not None and st.button("Apply patch", key="apply_patch"):
    with ui.guard("Apply patch"), tempfile.TemporaryDirectory() as tmp:
        name = Path(up.name).name               # the user's file name in messages and the ledger
        path = Path(tmp) / (name if Path(name).suffix == ".safetensors" else "upload.safetensors")
        path.write_bytes(up.getvalue())
        rep = apply_patch(handle, path, force=force, ledger=ledger)
        s.flash = (
            f"Applied {ui.escape_md(name)}: {rep.n_batches} batch(es), {rep.n_edits} edit(s), "
            f"layers {rep.layers}.")
        st.session_state["patch_uploads"] = st.session_state.get("patch_uploads", 0) + 1
        st.rerun()
