"""Causal trace: where does the model store a fact? Heatmaps, severed paths, a suggested R."""

from __future__ import annotations

import streamlit as st

from core.tracing import TraceSettings, default_window
from workbench import state, trace_flow, ui
from workbench.charts import trace as charts

s = state.get()
handle = ui.require_handle(s)
st.title("Causal trace")
st.caption("Blur the subject with noise, then put back one hidden state at a time: where the "
           "answer comes back, that state carries the fact (Meng et al., 2022; MEMIT §4.1).")


def use_example(fact) -> None:
    st.session_state["trace_prompt"], st.session_state["trace_subject"] = fact.prompt, fact.subject
    st.session_state["trace_answer"] = ""


examples = trace_flow.example_facts(4)
if examples:
    st.caption("Examples from the demo world — one click fills the form:")
    # A row that wraps: each button as wide as its whole prompt, moved to the next line when the
    # page is narrow (in equal columns the labels were cut off with an ellipsis).
    row = st.container(horizontal=True, wrap=True, gap="small", key="trace_examples")
    for fact in examples:
        row.button(ui.escape_md(fact.prompt), key=f"example_{fact.known_id}", on_click=use_example, args=(fact,),
                   wrap=True, help=f"Subject: {ui.escape_md(fact.subject)} · the model should answer "
                   f"{ui.escape_md(fact.answer)}")

st.session_state.setdefault("trace_prompt", s.trace_prompt)
st.session_state.setdefault("trace_subject", s.trace_subject)
c1, c2, c3 = st.columns([3, 2, 1])
prompt = c1.text_input("Prompt", key="trace_prompt", help="A sentence start the model completes "
                       "with the fact, e.g. 'Clara Joan Whitlow plays the sport of'.")
subject = c2.text_input("Subject", key="trace_subject", help="The part of the prompt the fact is "
                        "about; its tokens get the noise.")
answer = c3.text_input("Answer (optional)", key="trace_answer", help="The answer whose probability "
                       "is traced. Empty: the model's own top prediction.")
with st.expander("Trace settings"):
    d = TraceSettings()
    k1, k2, k3, k4 = st.columns(4)
    noise = k1.number_input("Noise (× σ)", value=d.noise, min_value=0.1, step=0.5, key="trace_noise",
                            help="Noise level as a multiple of the subject embeddings' standard "
                            "deviation σ (the paper uses 3).")
    samples = k2.number_input("Noise samples", value=d.samples, min_value=1, key="trace_samples",
                              help="Noisy copies averaged per cell (the paper uses 10).")
    window = k3.number_input("Window", value=default_window(handle.n_layers), min_value=1,
                             key="trace_window", help="Layers restored together for MLP and "
                             "attention, centred on each layer. The paper restores 10 of GPT-J's "
                             "28 layers; the default scales that to this model's depth.")
    seed = k4.number_input("Seed", value=d.seed, key="trace_seed", help="Seed of the noise.")
settings = TraceSettings(noise=noise, samples=int(samples), window=int(window), seed=int(seed))

failed = False
if st.button("Trace", type="primary", key="run_trace"):
    s.trace_prompt, s.trace_subject = prompt, subject
    s.trace = None          # a failed run must not leave the previous prompt's result on screen
    with ui.guard("Trace"), ui.progress("Tracing") as cb:
        s.trace = trace_flow.run_full_trace(handle, prompt, subject, answer, settings, progress=cb)
    failed = s.trace is None

full = s.trace
if full is None:
    if not failed:
        ui.empty_state("Type a prompt and its subject (or click an example), then press Trace.")
else:
    for note in full.notes:
        st.info(ui.escape_md(note), icon=":material/info:")
    first = full.grids["hidden"]
    m1, m2, m3 = st.columns(3)
    m1.metric("Answer", first.answer.strip() or repr(first.answer),
              help="The token whose probability is traced.")
    m2.metric("Clean P(answer)", f"{first.clean_prob:.3f}", help="With the subject intact.")
    m3.metric("Corrupted P(answer)", f"{first.corrupted_prob:.3f}", help="With the subject blurred.")
    # Lazy tabs: all three grids are computed together, only the open one is drawn.
    tabs = st.tabs([trace_flow.KIND_LABELS[k] for k in full.grids], key="trace_tab", on_change="rerun")
    for tab, (kind, result) in zip(tabs, full.grids.items()):
        with tab:
            if not tab.open:
                continue
            st.caption(trace_flow.KIND_HELP[kind])
            fig = charts.trace_heatmap(ui.plot_safe_result(result))
            st.plotly_chart(fig, key=f"heatmap_{kind}")
            p1, p2 = st.columns(2)
            with p1:
                ui.png_download(fig, f"trace-{kind}.png", key=f"png_{kind}")
            p2.download_button("Grid as CSV", ui.csv_bytes(trace_flow.grid_table(result)),
                               file_name=f"trace-{kind}.csv", mime="text/csv", key=f"csv_{kind}",
                               on_click="ignore", icon=":material/table:",
                               help="One row per (token, layer): P(answer) with that state "
                               "restored and its indirect effect.")
    st.subheader("Severed paths at the last subject token")
    st.caption("Restore the hidden state of one layer at the last subject token, normally and "
               "with the MLPs (or attention) of that token frozen. Where the MLP-severed bars "
               "fall far below the normal ones, the MLPs carry the fact: that gap picks R.")
    sev_fig = charts.severed_chart(full.severed, suggestion=full.suggestion,
                                   title="Effect of the hidden state at the last subject token")
    st.plotly_chart(sev_fig, key="severed")
    d1, d2 = st.columns(2)
    with d1:
        ui.png_download(sev_fig, "trace-severed.png", key="png_severed")
    d2.download_button("Whole trace as JSON", trace_flow.trace_json(full), file_name="trace.json",
                       mime="application/json", key="json_trace", on_click="ignore",
                       icon=":material/data_object:", help="Prompt, tokens, the three grids, the "
                       "severed curves and the suggested R — the same fields as `workbench trace "
                       "--json`.")

st.subheader("Average over many facts")
a1, a2 = st.columns([1, 3], vertical_alignment="bottom")
n = a1.number_input("Facts", min_value=1, max_value=400, value=10, key="avg_n",
                    help="Demo-world facts the model gets right; the averages follow Figure 8. "
                    "Each fact is a full trace (three grids and the severed paths): about a "
                    "second each on a GPU, up to half a minute on a small CPU.")
if a2.button("Run averaged trace", key="run_avg"):
    with ui.guard("Averaged trace"), ui.progress("Averaging") as cb:
        s.trace_avg = trace_flow.run_average(handle, int(n), settings, progress=cb)
if s.trace_avg is not None:
    avg = s.trace_avg
    st.caption(f"{avg.n_facts} facts used · {avg.n_skipped_wrong} skipped (model wrong) · "
               f"{avg.n_skipped_invalid} not traceable"
               + (f" · {avg.n_duplicates} duplicate(s) counted once" if avg.n_duplicates else ""))
    kind = st.segmented_control("Kind", list(avg.effects), default="mlp", key="avg_kind",
                                format_func=trace_flow.KIND_LABELS.get) or "mlp"
    st.plotly_chart(charts.average_curves(avg, kind), key="avg_curves")
    if avg.severed is not None:
        st.plotly_chart(charts.severed_chart(avg.severed, suggestion=avg.suggestion), key="avg_severed")
    st.download_button("Averaged trace as JSON", trace_flow.average_json(avg), file_name="trace-avg.json",
                       mime="application/json", key="json_avg", on_click="ignore",
                       icon=":material/data_object:", help="n_facts, n_layers, suggested_layers and "
                       "the indirect effects per kind, token category and layer — the format of "
                       "`workbench trace-avg --json`.")

suggestion = (s.trace_avg.suggestion if s.trace_avg is not None and s.trace_avg.suggestion
              else full.suggestion if full is not None else None)
if suggestion is not None:
    st.subheader(f"Suggested edit range R = {suggestion.layers}")
    st.caption(suggestion.rule)
    if suggestion.note:
        st.warning(ui.escape_md(suggestion.note), icon=":material/warning:")
    st.dataframe(trace_flow.evidence_table(suggestion), hide_index=True)
    if st.button("Use these layers anyway" if suggestion.note else "Use these layers for editing",
                 type="secondary" if suggestion.note else "primary", key="use_layers"):
        s.edit_layers = list(suggestion.layers)
    if s.edit_layers:
        st.success(f"The Edit page will use R = {s.edit_layers}.", icon=":material/check_circle:")
        st.page_link(ui.page_path("edit"), label="Go to Edit facts", icon=":material/arrow_forward:")
