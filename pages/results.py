"""Results: what an edit changed — metrics before/after, ΔW per layer, generations, traces, files."""

from __future__ import annotations

import math

import streamlit as st

from workbench import edit_flow, loader, results_flow, state, trace_flow, ui
from workbench.charts import edit as edit_charts
from workbench.charts import trace as trace_charts

s = state.get()
handle = ui.require_handle(s)
st.title("Results")
if not s.runs:
    ui.empty_state("No edit in this session yet. Load or type some facts on the Edit page and "
                   "press Run; the History page lists earlier sessions' batches.", "edit",
                   "Go to Edit facts")
    st.stop()

labels = {i: f"Batch {r.batch_id} · {edit_flow.METHOD_LABELS[r.method]} · {len(r.requests)} edit(s)"
          for i, r in enumerate(s.runs)}
pick = st.selectbox("Run of this session", list(labels)[::-1], format_func=labels.get, key="result_run")
run = s.runs[pick]
status = results_flow.batch_status(loader.get_ledger(), run.batch_id)
same_model = run.model_key == ui.current_key(s)
st.caption(f"Layers {run.result.layers} · {run.seconds:.1f} s · ledger batch {run.batch_id} ({status})")
if not same_model:
    st.warning("This run was made on another model than the one loaded now; the numbers below "
               "show what it did there.", icon=":material/swap_horiz:")
elif status != "applied":
    st.warning("This batch is no longer applied to the model (undone on the History page); the "
               "numbers below show what it did.", icon=":material/undo:")

st.subheader("Metrics before → after")
table = edit_flow.metrics_table(run)
cols = st.columns(4)
for col, (_, row) in zip(cols, table.head(4).iterrows()):
    has_after = isinstance(row["after"], float) and math.isfinite(row["after"])
    known = has_after and isinstance(row["before"], float) and math.isfinite(row["before"])
    col.metric(row["metric"].split(" (")[0], f"{row['after']:.1f}" if has_after else "n/a",
               delta=f"{row['after'] - row['before']:+.1f}" if known else None,
               help="Percent of edits (CounterFact criteria, Appendix C): the new object beats "
               "the true one (ES, PS); the true one still wins for other subjects (NS); S is their "
               "harmonic mean. n/a: the edits have no true object (or no paraphrase / neighbour "
               "prompts) to score with.")
st.dataframe(table, hide_index=True, key="metrics_table",
             column_config={c: st.column_config.NumberColumn(c, format="%.1f") for c in ("before", "after")})
with st.expander(f"Per-edit rows ({len(run.requests)})"):
    st.dataframe(results_flow.per_edit_table(run), hide_index=True, key="per_edit_table",
                 column_config={"stored": st.column_config.NumberColumn(
                     "stored", format="%.2f", help="MEMIT: the share of its change each layer's update "
                     "wrote on this edit's own key, ⟨ΔW kᵢ, rᵢ⟩ / ‖rᵢ‖² (mean over R). Near 1 the layer "
                     "had room; it falls when many keys crowd the layer or λ is large.")})

st.subheader("Weight change per layer")
st.caption("‖ΔW‖ of each edited MLP output matrix, absolute and relative to ‖W‖, and how much "
           "the layer's output on ordinary text changes (RMS over the corpus keys C: what Eq. 9 "
           "charges an edit; a large ‖ΔW‖ in key directions the corpus never uses changes little). "
           "MEMIT spreads the change over R; ROME and FT-W put it all in one layer.")
norm_fig = edit_charts.delta_norm_chart(run.result)
st.plotly_chart(norm_fig, key="delta_norms")
if warning := edit_flow.size_warning(run.result):
    st.warning(warning, icon=":material/warning:")
if note := edit_flow.size_note(run.result):
    st.info(note, icon=":material/info:")
if edit_flow.capacity_warning(run.result):
    st.warning(edit_flow.capacity_warning(run.result), icon=":material/warning:")
if "delta_norm" in run.result.per_edit:
    st.plotly_chart(edit_charts.contribution_chart(run.result), key="per_edit_chart")

st.subheader("Generations before → after")
pairs = results_flow.generation_pairs(run)
st.caption("Greedy continuations of the edited subjects"
           + (" and of a neighbour each" if (pairs["kind"] != "subject").any() else
              " (the rows have no neighbourhood prompts, so no neighbours are shown)")
           + "; words that changed are highlighted.")
for _, g in pairs.iterrows():
    st.markdown(f"**{ui.escape_md(g['prompt'])}** · {g['kind']}")
    b, a = st.columns(2)
    b.markdown("before: " + ui.escape_md(g["before"]))
    a.markdown("after: " + ui.diff_markdown(g["before"], g["after"]))

st.subheader("Where does the new fact live?")
subjects = [r.subject for r in run.requests]
idx = st.selectbox("Edited fact", range(len(subjects)), format_func=lambda i: subjects[i],
                   key="after_trace_pick")
if st.button("Trace it after the edit", key="after_trace", disabled=status != "applied" or not same_model,
             help="Causal trace of the edited prompt with the new object as the answer."):
    req = run.requests[idx]
    with ui.guard("Trace after edit"), ui.progress("Tracing") as cb:
        run.after_trace = trace_flow.run_full_trace(
            handle, req.filled, req.subject, req.target_new, trace_flow.TraceSettings(), progress=cb)
after = run.after_trace
if after is not None:
    st.plotly_chart(trace_charts.trace_heatmap(ui.plot_safe_result(after.grids["mlp"]),
                                               title="MLP restoration, after the edit"),
                    key="after_heatmap")
    st.plotly_chart(trace_charts.severed_chart(after.severed, suggestion=after.suggestion,
                                               title="Severed paths, after the edit"), key="after_severed")

st.subheader("Downloads")
d1, d2, d3, d4 = st.columns(4)
d1.download_button("Metrics CSV", ui.csv_bytes(results_flow.per_edit_table(run)),
                   file_name=f"batch-{run.batch_id}-metrics.csv", mime="text/csv",
                   key="dl_metrics", on_click="ignore", icon=":material/table:")
with d2:
    ui.png_download(norm_fig, f"batch-{run.batch_id}-delta-norms.png", key="dl_png",
                    label="ΔW chart PNG")
d3.download_button("Patch (safetensors)",
                   data=lambda: results_flow.patch_bytes(loader.get_ledger(), [run.batch_id]),
                   disabled=status == "deleted", file_name=f"batch-{run.batch_id}.patch.safetensors", key="dl_patch",
                   on_click="ignore", icon=":material/healing:",
                   help="ΔW of this batch + manifest; apply it on the History page or with "
                   "`workbench session apply`.")
with d4:
    ui.model_export(handle, key="dl_model")
