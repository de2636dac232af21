"""Learn: a guided tour of the MEMIT paper, each step live on the model."""

from __future__ import annotations

import streamlit as st

from core.genmetrics import generate_texts
from workbench import edit_flow, learn_flow, lessons, loader, results_flow, state, trace_flow, ui
from workbench.charts import trace as charts

s = state.get()
handle = ui.require_handle(s)
st.title("Learn: how MEMIT finds and rewrites a fact")
steps = lessons.STEPS
titles = [step.title for step in steps]


def go(by: int) -> None:
    """Back / Next: move the step and the step picker together (runs before the rerun)."""
    s.learn_step = min(max(s.learn_step + by, 0), len(steps) - 1)
    st.session_state["learn_pick"] = titles[s.learn_step]


st.session_state.setdefault("learn_pick", titles[s.learn_step])
pick = st.segmented_control("Step", titles, key="learn_pick", label_visibility="collapsed")
s.learn_step = titles.index(pick) if pick in titles else s.learn_step
step = steps[s.learn_step]
L = s.learn

facts = learn_flow.tour_facts()
if not facts:
    ui.empty_state("The tour needs the demo world (assets/world); build it with "
                   "`workbench demo build-world`.")
    st.stop()
fi = st.selectbox("The fact we follow", range(len(facts)), key="learn_fact",
                  format_func=lambda i: f"{facts[i].prompt} … {facts[i].answer}",
                  help="Facts of the demo world that the demo model was trained on.")
fact = facts[fi]
if L.get("fact") != fact:
    L.clear()
    L["fact"] = fact
own = "run" in L and results_flow.batch_status(loader.get_ledger(), L["run"].batch_id) == "applied"
if n_applied := loader.applied_batches(handle) - own:          # the tour's own edit (step 4) aside
    st.warning(lessons.edited_model_note(n_applied), icon=":material/warning:")
    st.page_link(ui.page_path("history"), label="Undo batches on the History page",
                 icon=":material/history:")

st.header(step.title)
st.markdown(step.text)
for caption, tex in step.equations:
    st.caption(caption)
    st.latex(tex)

if step.key == "ask":
    if st.button("Ask the model", type="primary", key="learn_ask"):
        with ui.guard("Ask"):
            L["said"] = generate_texts(handle, [fact.prompt], max_new_tokens=6, with_prompt=False)[0]
    if "said" in L:
        st.markdown(f"**{ui.escape_md(fact.prompt)}** → {ui.escape_md(L['said'])}")
        st.caption(f"The demo world says: {ui.escape_md(fact.answer)}.")
elif step.key in ("trace", "layers"):
    if st.button("Run the causal trace", type="primary", key="learn_trace"):
        with ui.guard("Trace"), ui.progress("Tracing") as cb:
            L["trace"] = trace_flow.run_full_trace(handle, fact.prompt, fact.subject, None,
                                                   trace_flow.TraceSettings(), progress=cb)
    full = L.get("trace")
    if full is not None and step.key == "trace":
        for kind in ("hidden", "mlp"):
            st.plotly_chart(charts.trace_heatmap(ui.plot_safe_result(full.grids[kind])),
                            key=f"learn_heatmap_{kind}")
        st.caption("Dark cells: restoring that one state brings the answer back. Look for the "
                   "last subject token (marked *) in the MLP map: in GPT-J the strong cells sit in "
                   "the early-middle layers; in this small 8-layer demo model, at layers 0-1.")
    elif full is not None:
        st.plotly_chart(charts.severed_chart(full.severed, suggestion=full.suggestion), key="learn_severed")
        if full.suggestion.note:        # as on the Causal trace page: too weak to pick R
            st.warning(ui.escape_md(full.suggestion.note), icon=":material/warning:")
            st.markdown(f"The trace does not single out layers for this fact; **{full.suggestion.layers}** "
                        "is only the least bad window, not a finding.")
        else:
            st.markdown(f"The gap is largest over layers **{full.suggestion.layers}**: the suggested R.")
        if st.button("Use these layers anyway" if full.suggestion.note else "Use these layers for editing",
                     key="learn_use_layers"):
            s.edit_layers = list(full.suggestion.layers)
            st.success(f"R = {s.edit_layers} will be used on the Edit page and in step 4.")
elif step.key == "edit":
    choices = learn_flow.alternative_objects(fact)
    new = st.selectbox("New object", choices, key="learn_new", help="What the model should say instead.")
    req = learn_flow.tour_request(fact, new)
    st.markdown(f"Edit: **{ui.escape_md(req.filled)}** {ui.escape_md(fact.answer)} → "
                f"**{ui.escape_md(new)}**")
    if st.button("Edit with MEMIT", type="primary", key="learn_edit"):
        with ui.guard("Edit"), ui.progress("Editing") as cb:
            hp = edit_flow.default_hparams(handle, "memit", s.edit_layers)
            L["run"] = edit_flow.run_edit(handle, [req], "memit", hp, loader.get_ledger(),
                                          ui.current_key(s), progress=cb)
            s.runs.append(L["run"])
            L.pop("undone", None)
    if "run" in L:
        st.success(f"Edited layers {L['run'].result.layers} (batch {L['run'].batch_id}). "
                   "Go to step 5 to test it.", icon=":material/check_circle:")
        if warning := edit_flow.size_warning(L["run"].result):
            st.warning(warning, icon=":material/warning:")
        if note := edit_flow.size_note(L["run"].result):
            st.info(note, icon=":material/info:")
elif step.key == "test":
    run = L.get("run")
    if run is None:
        if L.get("undone"):
            st.success(L["undone"], icon=":material/check_circle:")
        ui.empty_state("Make the edit in step 4 first.")
    else:
        st.dataframe(edit_flow.metrics_table(run), hide_index=True, key="learn_metrics")
        req = run.requests[0]
        prompts = [req.filled, *req.paraphrase_prompts, *req.neighborhood_prompts]
        kinds = ["edit prompt"] + ["paraphrase"] * len(req.paraphrase_prompts) + \
            ["neighbour"] * len(req.neighborhood_prompts)
        if st.button("Ask again", key="learn_test"):
            with ui.guard("Test"):
                L["after"] = generate_texts(handle, prompts, max_new_tokens=4, with_prompt=False)
        for kind, p, out in zip(kinds, prompts, L.get("after", [])):
            said = f"**{ui.escape_md(out.strip())}**" if out.strip() else "(nothing)"
            st.markdown(f"*{kind}* · {ui.escape_md(p)} → {said}")
        if st.button("Undo the edit", key="learn_undo", help="Leave the model as it was for the next "
                     "student (the History page lists every batch)."):
            with ui.guard("Undo"):
                loader.get_ledger().revert(run.batch_id, handle)
                L.pop("run"), L.pop("after", None)
                L["undone"] = f"Batch {run.batch_id} undone (the History page lists every batch)."
                st.rerun()

b1, _, b2 = st.columns([1, 4, 1])
b1.button("← Back", key="learn_back", disabled=s.learn_step == 0, on_click=go, args=(-1,))
b2.button("Next →", key="learn_next", disabled=s.learn_step == len(steps) - 1, on_click=go, args=(1,))
