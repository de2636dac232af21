"""Model: choose the language model to study (the demo model is preselected) and see its card."""

from __future__ import annotations

import streamlit as st

from workbench import loader, state, ui

s = state.get()
st.title("Model")
st.caption("Every page works on the model chosen here. It is loaded once and shared by all "
           "browser sessions; traces and edits take turns on it.")

with st.form("model_form"):
    name = st.text_input(
        "Model", value=s.model_name,
        help="'demo' is the small GPT-2 trained on the invented demo world that ships with the "
        "workbench (works offline). Or a HuggingFace hub id such as 'gpt2-xl' (needs the hub or "
        "a local cache) or a local folder with config.json, weights and tokenizer.")
    c1, c2, c3 = st.columns(3)
    device = c1.selectbox("Device", loader.devices(), index=loader.devices().index(s.device)
                          if s.device in loader.devices() else 0,
                          help="'auto' uses the GPU when there is one.")
    dtype = c2.selectbox("Precision", loader.DTYPES, index=loader.DTYPES.index(s.dtype),
                         help="'auto' is float32 on CPU and bfloat16 on GPU. Half precision "
                         "halves memory; MEMIT's statistics are still computed in float32.")
    trust = c3.checkbox("Trust remote code", value=s.trust_remote_code,
                        help="Some hub models run their own Python code. Allow it only for "
                        "models whose code you trust.")
    submitted = st.form_submit_button("Load model", type="primary")

if submitted:
    previous = (s.model_name, s.device, s.dtype, s.trust_remote_code)
    s.model_name, s.device, s.dtype, s.trust_remote_code = name.strip(), device, dtype, trust
    try:
        with st.spinner(f"Loading '{s.model_name}' … (a hub id with no network can take ~30 s "
                        "to fail; HF_HUB_OFFLINE=1 makes it fail at once)"):
            loader.get_handle(ui.current_key(s))
        st.rerun()
    except Exception as err:  # noqa: BLE001
        ui.show_error(err, "Model")
        s.model_name, s.device, s.dtype, s.trust_remote_code = previous
        st.caption(f"Still using '{ui.escape_md(s.model_name)}'.")

handle = ui.require_handle(s)
info = loader.loaded(ui.current_key(s))
st.subheader(f"Model card · {ui.escape_md(s.model_name)}")
facts = ui.model_facts(handle)
cols = st.columns(4)
for i, (label, value) in enumerate(list(facts.items())[:4]):
    cols[i].metric(label, value)
rest = list(facts.items())[4:]              # the first four are the metrics above
if rest:
    st.dataframe({"property": [k for k, _ in rest], "value": [str(v) for _, v in rest]},
                 hide_index=True, width="stretch")
st.markdown(f"**Edit state:** {ui.edit_state_text(handle)}")
if info.replay and info.replay.batch_ids:
    st.caption(f"Replayed {len(info.replay.batch_ids)} batch(es) from the workspace history when "
               "the model was loaded.")
if info.replay_error:
    st.warning(f"The edit history could not be fully replayed: {ui.escape_md(info.replay_error)}",
               icon=":material/warning:")
st.caption("MEMIT rewrites the output matrix of the MLP in a few middle layers "
           f"(`{handle.info()['mlp_out_path']}`). The Causal trace page shows which layers.")
st.page_link(ui.page_path("trace"), label="Next: trace a fact", icon=":material/arrow_forward:")
