"""Evaluate: MEMIT vs ROME vs FT-W on the same demo-world batch, and the scaling curve (Figure 5)."""

from __future__ import annotations

import streamlit as st

from core.editing import METHODS
from core.hparams import preset_for
from core.scaling import compare_methods, demo_pool, run_scaling
from workbench import edit_flow, results_flow, state, ui
from workbench.charts import scaling as charts

s = state.get()
handle = ui.require_handle(s)
st.title("Evaluate")
st.caption("Counterfactual edits from the demo world, scored as in the paper (Appendix C): each "
           "method starts from the model as it is now and is undone afterwards, bit for bit. "
           "Other sessions wait while an evaluation runs.")
methods_all = [m for m in edit_flow.METHOD_LABELS if m in METHODS]
R = s.edit_layers
st.caption(f"Layers R = {R or preset_for(handle).layers}"
           + (" (from the causal trace)." if R else " (the preset for this model)."))

st.subheader("Compare methods on one batch")
c1, c2, c3 = st.columns([1, 2, 1])
n = c1.number_input("Edits", min_value=1, max_value=1000, value=10, key="cmp_n",
                    help="The first n counterfactual cases of the demo world.")
methods = c2.multiselect("Methods", methods_all, default=methods_all, key="cmp_methods",
                         format_func=edit_flow.METHOD_LABELS.get,
                         help="MEMIT: one closed-form update spread over R. ROME: one rank-one "
                         "update per fact, one after another, in one layer. FT-W: fine-tuning of "
                         "one layer's weights on the new facts (the paper's constrained baseline).")
gen = c3.number_input("GE sample", min_value=0, max_value=100, value=5, key="cmp_gen",
                      help="Generation entropy (fluency) is measured on sampled text about the "
                      "first k subjects; 0 skips it.")
if st.button("Compare", type="primary", key="run_compare", disabled=not methods):
    with ui.guard("Compare"), ui.progress("Comparing") as cb, handle.lock:
        s.comparison = compare_methods(
            handle, demo_pool(int(n)), methods, base_hparams=preset_for(handle, layers=R),
            gen_sample=int(gen), progress=cb)
if s.comparison is not None:
    comp = s.comparison
    st.plotly_chart(charts.comparison_bars(comp.table), key="compare_chart")
    st.dataframe(results_flow.with_method_names(comp.table), hide_index=True, key="compare_table",
                 column_config=results_flow.metric_columns(comp.table.columns))
    st.download_button("Comparison CSV", ui.csv_bytes(comp.table), file_name="comparison.csv",
                       mime="text/csv", key="dl_compare", on_click="ignore")
else:
    ui.empty_state("Pick a batch size and methods, then press Compare (10 edits take seconds on "
                   "the demo model).")

st.subheader("Scaling curve")
st.caption("Score against the number of edits made at once, log scale (cf. Figure 5). "
           "Sequential ROME at 1,000 edits takes minutes.")
d1, d2 = st.columns(2)
sizes = d1.multiselect("Batch sizes", [1, 10, 100, 1000], default=[1, 10, 100], key="scale_sizes",
                       help="Numbers of edits made at once; each size is a fresh batch of the first "
                       "n demo-world cases on the unedited model (Figure 5 plots these on a log axis).")
smethods = d2.multiselect("Methods ", methods_all, default=methods_all, key="scale_methods",
                          format_func=edit_flow.METHOD_LABELS.get)
if st.button("Run scaling", key="run_scaling", disabled=not (sizes and smethods)):
    with ui.guard("Scaling"), ui.progress("Scaling") as cb, handle.lock:
        s.scaling = run_scaling(handle, demo_pool(max(sizes)), sizes, smethods,
                                         base_hparams=preset_for(handle, layers=R),
                                         gen_sample=int(gen), progress=cb)
if s.scaling is not None:
    table = s.scaling
    fig = charts.scaling_figure(table)
    st.plotly_chart(fig, key="scaling_chart")
    st.dataframe(results_flow.with_method_names(table), hide_index=True, key="scaling_table",
                 column_config=results_flow.metric_columns(table.columns))
    e1, e2 = st.columns(2)
    e1.download_button("Scaling CSV", ui.csv_bytes(table), file_name="scaling.csv", mime="text/csv",
                       key="dl_scaling", on_click="ignore")
    with e2:
        ui.png_download(fig, "scaling.png", key="dl_scaling_png")
