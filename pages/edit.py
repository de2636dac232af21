"""Edit facts: a table of new facts (typed, uploaded or from the demo world), checked, then MEMIT."""

from __future__ import annotations

import streamlit as st

from core.editing import METHODS
from core.requests import read_requests
from workbench import edit_flow, loader, state, ui

s = state.get()
handle = ui.require_handle(s)
st.title("Edit facts")
st.caption("Each row is one new fact (subject, relation, new object). MEMIT writes the whole "
           "batch at once into the MLPs of the layers R.")

c = st.columns([1, 1, 1, 1, 3])
for col, n in zip(c, (1, 10, 100)):
    if col.button(f"{n} example{'s' if n > 1 else ''}", key=f"examples_{n}",
                  help=f"Load {n} counterfactual edits from the demo world (CounterFact format)."):
        with ui.guard("Examples"):
            s.set_draft(edit_flow.example_rows(n))
            st.rerun()
if c[3].button("Clear table", key="clear_table"):
    s.set_draft([])
    st.rerun()

max_mb = edit_flow.request_upload_mb(int(st.get_option("server.maxUploadSize")))
with st.expander("Upload a CSV or JSON file (CounterFact records too)"):
    up = st.file_uploader("Edit requests", type=["csv", "json", "jsonl"], key="upload", max_upload_size=max_mb,
                          help=f"CSV columns subject, relation or prompt, object (target_new), "
                          f"optional true_object. JSON: a list of the same, or CounterFact / zsRE "
                          f"records. At most {max_mb} MB.")
    if up is not None:
        try:
            uploaded = read_requests(up.getvalue(), fmt="csv" if up.name.endswith(".csv") else None,
                                     max_bytes=max_mb * 2**20)
        except Exception as err:  # noqa: BLE001
            ui.show_error(err, f"Upload {up.name}")
            st.caption("Nothing was added and the model is unchanged. Fix these rows in the file and "
                       "upload it again.")
        else:
            st.success(f"{len(uploaded)} edit(s) read from {ui.escape_md(up.name)}.")
            b1, b2 = st.columns(2)
            if b1.button("Replace the table", key="upload_replace"):
                s.set_draft([edit_flow.request_to_row(r) for r in uploaded])
                st.rerun()
            if b2.button("Append to the table", key="upload_append"):
                s.set_draft(s.draft_rows + [edit_flow.request_to_row(r) for r in uploaded])
                st.rerun()

base = edit_flow.editor_frame(s.draft_base)              # index 1..n: the row numbers problems name
table = st.data_editor(base, key=s.editor_key, num_rows="dynamic", width="stretch", hide_index=False,
                       placeholder="", column_config=edit_flow.column_config())
rows = table.fillna("").to_dict("records")
if edit_flow.rows_moved(base, table):       # a typed row shows no number, a deleted one leaves a gap
    s.set_draft(rows)                       # so the editor starts again from the table, numbered 1..n
    st.rerun()
s.update_draft(rows)

requests, problems, warnings = edit_flow.check_rows(s.draft_rows, handle)
if not s.draft_rows or all(edit_flow.blank(r) for r in s.draft_rows):
    ui.empty_state("The table is empty: load an example batch above, upload a file, or type a "
                   "row (subject, relation or prompt template with '{}', new object).")
elif problems:
    st.error(f"{len(problems)} problem(s) — fix them before running (row numbers as in the table):",
             icon=":material/error:")
    st.dataframe(ui.problems_frame(problems), hide_index=True, width="stretch")
else:
    st.success(f"{len(requests)} edit(s) ready.", icon=":material/check_circle:")
    untrue = sum(1 for r in requests if not r.target_true)
    if untrue:
        st.info(f"{untrue} of {len(requests)} edit(s) have no true object. ES, PS and NS compare "
                "the new object with the true one, so they read n/a without it (the new object's "
                "top-1 check still runs). Fill \"True object\" with what the model says now to "
                "score them.", icon=":material/info:")
for w in warnings:
    st.warning(ui.escape_md(w), icon=":material/warning:")

st.subheader("Method")
methods = [m for m in edit_flow.METHOD_LABELS if m in METHODS]
s.method = st.radio("Method", methods, index=methods.index(s.method) if s.method in methods else 0,
                    format_func=edit_flow.METHOD_LABELS.get, horizontal=True, key="method",
                    help="MEMIT spreads the batch over several layers in one closed-form update; "
                    "ROME edits one layer, one fact after another; FT-W fine-tunes one layer.")
hparams, hparams_ok = None, False
with ui.guard("Hyperparameters"):
    preset = edit_flow.default_hparams(handle, s.method, s.edit_layers)
    with st.expander("Hyperparameters", expanded=False):
        st.caption(edit_flow.METHOD_NOTES[s.method]
                   + (f" R = {s.edit_layers} comes from the causal trace." if s.edit_layers else ""))
        layers = st.multiselect(
            "Layers R", list(range(handle.n_layers)), default=preset.layers, key="hp_layers",
            help="The MLP layers whose W_out is rewritten. The Causal trace page suggests them.")
        if layers and sorted(layers) != preset.layers:   # the preset for this R (its own λ, if measured)
            preset = edit_flow.default_hparams(handle, s.method, sorted(layers))
        changes = {"layers": layers}
        cols = st.columns(3)
        for i, (name, label, tip) in enumerate(edit_flow.hparam_fields(s.method)):
            v = getattr(preset, name)
            # λ's widget is keyed by its default too: a range with another measured λ starts from it
            key = f"hp_{name}_{v:g}" if name == "mom2_weight" else f"hp_{name}"
            changes[name] = cols[i % 3].number_input(label, value=v, key=key, help=tip,
                                                     min_value=type(v)(0))
    hparams = preset.replace(**changes)
    hparams_ok = True
    st.caption(edit_flow.layers_line(s.method, hparams.layers, bool(s.edit_layers)))

ready = bool(requests) and not problems and hparams_ok
if s.method == "memit":
    with st.expander("Capacity check: how full would R be with this batch?"):
        st.caption(edit_flow.CAPACITY_HELP)
        if st.button("Check capacity", key="check_capacity", disabled=not ready,
                     help="Reads the keys of this batch and the layers' key statistics; nothing "
                     "is edited. Seconds once a layer's statistics are cached; the first check (or "
                     "edit) of a layer computes them, minutes on a CPU, and they are kept on disk."):
            with ui.guard("Capacity check"), ui.progress("Capacity check") as cb:
                s.capacity = edit_flow.capacity_table(handle, requests, hparams, progress=cb)
                s.capacity_for = edit_flow.capacity_signature(requests, hparams)
        if s.capacity is not None:
            if not ready or s.capacity_for != edit_flow.capacity_signature(requests, hparams):
                st.info("The batch, R or λ changed since this check: check again for the current "
                        "ones.", icon=":material/update:")
            st.dataframe(s.capacity, hide_index=True, key="capacity_table",
                         column_config={c: st.column_config.NumberColumn(c, format="%.3g")
                                        for c in ("stored (median)", "stored (worst 10 %)",
                                                  "smallest eigenvalue of M")})
if st.button(f"Run {edit_flow.METHOD_LABELS[s.method]} on {len(requests)} edit(s)", type="primary",
             disabled=not ready, key="run_edit"):
    with ui.guard("Edit"), ui.progress("Editing") as cb:
        run = edit_flow.run_edit(handle, requests, s.method, hparams, loader.get_ledger(),
                                 ui.current_key(s), progress=cb)
        s.runs.append(run)
        st.switch_page(ui.page_path("results"))
