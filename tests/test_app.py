"""AppTest tests of the Streamlit workbench: every page renders, and the main flows work.

The app runs in-process (`streamlit.testing.v1.AppTest`) on the demo model when it is built, else
on a tiny random GPT-2 saved to a folder (the loader honours WORKBENCH_DEFAULT_MODEL). The model
is loaded once per test process (st.cache_resource) and shared by every AppTest instance, as the
real server shares it between browser sessions. Edits are undone by the tests that make them.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from workbench.state import DEFAULT_MODEL_ENV, STATE_KEY

APP = Path(__file__).resolve().parent.parent / "workbench" / "app.py"


def save_app_model(path) -> None:
    """A tiny random GPT-2 (3 layers, d=32) with room for 512 positions (corpus lines of the demo
    world are long in the tiny tokenizer), saved as a standard HF folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.tiny import make_tokenizer

    torch.manual_seed(0)
    tok = make_tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=3, n_head=4,
                                       n_positions=512, bos_token_id=tok.bos_token_id,
                                       eos_token_id=tok.eos_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)


@pytest.fixture(scope="module")
def app_model(tmp_path_factory):
    """The model name the app opens with (demo model, or a tiny model folder)."""
    from core.model import demo_model_dir

    if demo_model_dir().is_dir():
        name = "demo"
    else:
        name = str(tmp_path_factory.mktemp("tiny-model"))
        save_app_model(name)
    old = os.environ.get(DEFAULT_MODEL_ENV)
    os.environ[DEFAULT_MODEL_ENV] = name
    yield name
    if old is None:
        os.environ.pop(DEFAULT_MODEL_ENV, None)
    else:
        os.environ[DEFAULT_MODEL_ENV] = old


def new_app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=60)


def open_page(name: str) -> AppTest:
    at = new_app().run()
    assert not at.exception, at.exception
    at.switch_page(f"../pages/{name}.py").run()
    assert not at.exception, at.exception
    return at


def unescape(md: str) -> str:
    """Markdown as the user reads it (the app backslash-escapes user text)."""
    return re.sub(r"\\(.)", r"\1", md)


def errors(at: AppTest) -> list[str]:
    return [unescape(e.value) for e in at.error]


def plotly_specs(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def array(obj) -> np.ndarray:
    """A plotly array from a figure's JSON (plain list or base64 'bdata' with dtype and shape)."""
    if isinstance(obj, dict) and "bdata" in obj:
        a = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"]))
        shape = obj.get("shape")
        return a.reshape([int(x) for x in str(shape).split(",")]) if shape else a
    return np.asarray(obj)


def handle_of(name: str):
    from workbench import loader

    return loader.get_handle(loader.model_key(name))


def weights(handle) -> dict[int, torch.Tensor]:
    return {i: handle.mlp_out_weight(i).detach().clone() for i in range(handle.n_layers)}


def same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(a[i], b[i]) for i in a)


# ---- model page ---------------------------------------------------------------------------------

def test_model_page_shows_card(app_model):
    from workbench import loader

    at = new_app().run()
    assert not at.exception, at.exception
    assert not errors(at)
    handle = loader.get_handle(loader.model_key(app_model))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Layers"] == str(handle.n_layers)
    assert metrics["Hidden width (d_model)"] == str(handle.d_model)
    assert metrics["MLP width (d_mlp)"] == str(handle.d_mlp)
    assert metrics["Family"] == "gpt2"


def test_model_page_bad_folder_is_readable_and_keeps_model(app_model):
    at = new_app().run()
    at.text_input[0].set_value("/nonexistent/model-folder")
    at.button[0].click().run()
    assert not at.exception, at.exception
    msgs = errors(at)
    assert any("does not exist" in m and "/nonexistent/model-folder" in m for m in msgs), msgs
    assert at.session_state["workbench_state"].model_name == app_model
    assert {m.label for m in at.metric} >= {"Layers"}      # the card of the old model is still there


# ---- trace page ---------------------------------------------------------------------------------

def test_trace_page_empty_state_then_heatmaps_with_the_right_shape(app_model):
    at = open_page("trace")
    assert not errors(at)
    assert any("press Trace" in i.value for i in at.info)            # says what to do next
    at.button[0].click().run()                                         # a demo-world example
    prompt = at.text_input(key="trace_prompt").value
    subject = at.text_input(key="trace_subject").value
    assert subject and subject in prompt
    at.button(key="run_trace").click().run()
    assert not at.exception, at.exception
    assert not errors(at)
    handle = handle_of(app_model)
    n_tokens = len(handle.tokenizer(prompt)["input_ids"])
    full = at.session_state[STATE_KEY].trace
    from workbench.trace_flow import KIND_LABELS

    for kind, label in KIND_LABELS.items():                           # one tab drawn at a time
        at.session_state["trace_tab"] = label
        at.run()
        specs = plotly_specs(at)
        heatmaps = [sp for sp in specs if sp["data"][0]["type"] == "heatmap"]
        assert len(heatmaps) == 1
        z = array(heatmaps[0]["data"][0]["z"])
        assert z.shape == (n_tokens, handle.n_layers)
        assert z == pytest.approx(full.grids[kind].scores)
        bars = [sp for sp in specs if sp["data"][0]["type"] == "bar"]
        assert len(bars) == 1 and len(array(bars[0]["data"][0]["y"])) == handle.n_layers
    at.button(key="use_layers").click().run()
    assert at.session_state[STATE_KEY].edit_layers == full.suggestion.layers


def test_trace_page_bad_subject_is_a_readable_error(app_model):
    at = open_page("trace")
    at.text_input(key="trace_prompt").set_value("The capital of Norvania is")
    at.text_input(key="trace_subject").set_value("Atlantis")
    at.button(key="run_trace").click().run()
    assert not at.exception, at.exception
    msgs = errors(at)
    assert len(msgs) == 1 and msgs[0].startswith("Trace: subject:"), msgs
    assert at.session_state[STATE_KEY].trace is None


# ---- edit page ----------------------------------------------------------------------------------

THREE_ROWS = [
    {"subject": "Nils Jean Wexcroft", "relation": "", "prompt": "{} works as a", "target_new": "librarian",
     "target_true": "poet"},
    {"subject": "Wanda Hope Kesthwaite", "relation": "sport", "prompt": "", "target_new": "chess",
     "target_true": "swimming"},
    {"subject": "Caldador", "relation": "", "prompt": "{} is located in the continent of",
     "target_new": "Europe", "target_true": "America"},
]


def type_rows(at: AppTest, rows: list[dict]) -> None:
    """Type rows into the (empty) edit table, as the data editor reports them."""
    key = at.session_state[STATE_KEY].editor_key
    at.session_state[key] = {"edited_rows": {}, "added_rows": rows, "deleted_rows": []}
    at.run()


def fast_hparams(at: AppTest) -> None:
    at.number_input(key="hp_n_samples").set_value(300)
    at.number_input(key="hp_v_steps").set_value(5)


def test_edit_three_rows_then_metrics_and_delta_norm_chart_then_undo(app_model):
    handle = handle_of(app_model)
    before = weights(handle)
    at = open_page("edit")
    at.button(key="clear_table").click().run()
    assert any("table is empty" in i.value for i in at.info)
    type_rows(at, THREE_ROWS)
    assert not errors(at), errors(at)
    assert any("3 edit(s) ready" in x.value for x in at.success)
    fast_hparams(at)
    at.run()
    at.button(key="run_edit").click().run()
    assert not at.exception, at.exception
    assert not errors(at), errors(at)
    s = at.session_state[STATE_KEY]
    run = s.last_run
    assert run is not None and len(run.requests) == 3
    changed = [i for i in before if not torch.equal(before[i], handle.mlp_out_weight(i))]
    assert changed == sorted(run.result.layers)
    # a browser reload is a new session: the table draft and the history are still there
    reloaded = open_page("history")
    assert [r["subject"] for r in reloaded.session_state[STATE_KEY].draft_rows] == \
        [r["subject"] for r in THREE_ROWS]
    history = [d.value for d in reloaded.dataframe if "status" in d.value.columns][0]
    assert history["id"].tolist()[0] == run.batch_id and history["status"].tolist()[0] == "applied"
    # the Results page shows the metrics table and the ΔW norm chart of this run
    assert at.metric or at.dataframe
    metric_tables = [d.value for d in at.dataframe if "metric" in d.value.columns]
    assert metric_tables and {"before", "after"} <= set(metric_tables[0].columns)
    assert "Score S (%)" in set(metric_tables[0]["metric"])
    norm_charts = [sp for sp in plotly_specs(at) if "norm" in json.dumps(sp.get("layout", {})).lower()]
    assert norm_charts
    xs = sorted({int(x) for tr in norm_charts[0]["data"] for x in array(tr["x"]).tolist()})
    assert xs == sorted(run.result.layers)
    # the downloads: a patch of this batch, and the edited model as a zip
    import io
    import zipfile

    from core.patch import read_patch
    from workbench import loader, results_flow

    patch_file = Path(os.environ["WORKBENCH_HOME"]) / "test-download.patch.safetensors"
    patch_file.write_bytes(results_flow.patch_bytes(loader.get_ledger(), [run.batch_id]))
    manifest = read_patch(patch_file).manifest
    assert manifest["n_edits"] == 3 and manifest["base_hash"] == handle.base_hash
    names = zipfile.ZipFile(io.BytesIO(results_flow.model_zip_bytes(handle))).namelist()
    assert {"edited-model/config.json", "edited-model/model.safetensors"} <= set(names)
    edited = weights(handle)
    # an app restart: the model is loaded again from disk and the ledger replayed onto it
    import streamlit as st

    st.cache_resource.clear()
    restarted = new_app().run()
    handle = handle_of(app_model)
    assert same_weights(edited, weights(handle))
    assert any("1 edit batch applied" in m.value for m in restarted.markdown if "Edit state" in m.value)
    # undo on the History page → clean state, weights bit-exact
    at.switch_page("../pages/history.py").run()
    at.button(key="undo").click().run()
    assert not at.exception, at.exception
    assert same_weights(before, weights(handle))
    assert any("undone (bit-exact)" in x.value for x in at.success)
    # apply the exported patch on the History page → the edited weights again, as a new batch
    at.get("file_uploader")[0].set_value(("p.safetensors", patch_file.read_bytes(),
                                          "application/octet-stream")).run()
    at.button(key="apply_patch").click().run()
    assert not at.exception, at.exception
    assert not errors(at), errors(at)
    assert same_weights(edited, weights(handle))
    at.button(key="undo").click().run()
    assert same_weights(before, weights(handle))
    at.switch_page("../pages/model.py").run()
    assert any("clean" in m.value for m in at.markdown if "Edit state" in m.value)


def test_model_page_hub_id_offline_is_a_clear_message(app_model):
    at = new_app().run()
    at.text_input[0].set_value("some-org/not-on-this-machine")
    at.button[0].click().run()
    assert not at.exception, at.exception
    msgs = errors(at)
    assert len(msgs) == 1 and "could not be fetched from the HuggingFace hub" in msgs[0], msgs
    assert at.session_state[STATE_KEY].model_name == app_model


def test_upload_counterfact_records_fill_the_table(app_model):
    from core.world_io import world_dir

    records = json.loads((world_dir() / "counterfact.json").read_text())[:4]
    at = open_page("edit")
    at.get("file_uploader")[0].set_value(("cf.json", json.dumps(records).encode(), "application/json")).run()
    assert not errors(at), errors(at)
    at.button(key="upload_replace").click().run()
    rows = at.session_state[STATE_KEY].draft_rows
    assert [r["subject"] for r in rows] == [c["requested_rewrite"]["subject"] for c in records]
    assert all(r["neighborhood_prompts"] for r in rows)               # kept for the NS metric
    assert any("4 edit(s) ready" in x.value for x in at.success)


def test_upload_csv_with_bad_rows_lists_errors_and_leaves_weights(app_model):
    handle = handle_of(app_model)
    before = weights(handle)
    at = open_page("edit")
    rows_before = list(at.session_state[STATE_KEY].draft_rows)
    csv = ("subject,relation,object\n"
           "Nils Jean Wexcroft,{} works as a,librarian\n"
           ",{} plays the sport of,chess\n"
           "Wanda Hope Kesthwaite,no template here,chess\n"
           "Caldador,{} is located in the continent of,\n")
    at.get("file_uploader")[0].set_value(("bad.csv", csv.encode(), "text/csv")).run()
    assert not at.exception, at.exception
    msgs = errors(at)
    assert msgs and "3 problems" in msgs[0], msgs
    problems = [d.value for d in at.dataframe if "problem" in d.value.columns][0]
    assert problems["row"].tolist() == [2, 3, 4]
    assert problems["field"].tolist() == ["subject", "relation", "object"]
    assert at.session_state[STATE_KEY].draft_rows == rows_before      # table unchanged
    assert same_weights(before, weights(handle))                        # model unchanged


# ---- every page ---------------------------------------------------------------------------------

PAGES = ("model", "trace", "edit", "results", "history", "evaluate", "learn")


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_without_exception(app_model, page):
    at = open_page(page)
    assert not errors(at), errors(at)
    assert at.title, "every page has a title"
    if page in ("results", "history"):                       # fresh session: says what to do next
        assert at.info or at.dataframe


def test_results_page_empty_state_points_to_edit(app_model):
    at = open_page("results")
    assert any("No edit in this session yet" in i.value for i in at.info)


def test_evaluate_compares_methods_on_a_small_batch(app_model):
    handle = handle_of(app_model)
    before = weights(handle)
    at = open_page("evaluate")
    at.number_input(key="cmp_n").set_value(2)
    at.number_input(key="cmp_gen").set_value(0)
    at.multiselect(key="cmp_methods").set_value(["memit", "ft"])
    at.button(key="run_compare").click().run()
    assert not at.exception, at.exception
    assert not errors(at), errors(at)
    table = at.session_state[STATE_KEY].comparison.table
    assert table["method"].tolist() == ["unedited", "memit", "ft"]
    bars = [sp for sp in plotly_specs(at) if sp["data"] and sp["data"][0]["type"] == "bar"]
    assert len(bars) == 1 and len(bars[0]["data"]) == 3               # one bar group per method
    assert same_weights(before, weights(handle))                      # each method was undone


def test_learn_tour_asks_and_traces_live(app_model):
    at = open_page("learn")
    assert len(at.latex) >= 1                                          # the paper's equations
    at.button(key="learn_ask").click().run()
    assert not at.exception, at.exception
    assert any("→" in m.value for m in at.markdown)
    at.button(key="learn_next").click().run()
    assert at.session_state[STATE_KEY].learn_step == 1
    at.button(key="learn_trace").click().run()
    assert not at.exception, at.exception
    assert len([sp for sp in plotly_specs(at) if sp["data"][0]["type"] == "heatmap"]) == 2


def test_two_sessions_at_once_get_their_own_results(app_model, monkeypatch):
    """Two sessions trace different prompts concurrently on the one shared model: each gets
    exactly the result a lone session gets (the model lock; per-session state)."""
    import threading

    from streamlit.runtime.scriptrunner.script_cache import ScriptCache

    from core.tracing import TraceSettings

    # AppTest compiles the page scripts on every run (a fresh ScriptCache per run), and CPython
    # 3.11 before 3.11.8 can raise "AST constructor recursion depth mismatch" when two threads
    # compile at once (gh-106905). The server compiles each page once into a shared cache; here
    # compiling is serialised so the test exercises the sessions, not that interpreter bug.
    compile_lock = threading.Lock()
    original = ScriptCache.get_bytecode

    def get_bytecode(self, path):
        with compile_lock:
            return original(self, path)

    monkeypatch.setattr(ScriptCache, "get_bytecode", get_bytecode)
    from workbench import trace_flow

    prompts = [("Nils Jean Wexcroft works as a", "Nils Jean Wexcroft"),
               ("Caldador is located in the continent of", "Caldador")]
    handle = handle_of(app_model)
    alone = [trace_flow.run_full_trace(handle, p, subj, None, TraceSettings()) for p, subj in prompts]
    apps = [open_page("trace") for _ in prompts]
    for at, (p, subj) in zip(apps, prompts):
        at.text_input(key="trace_prompt").set_value(p)
        at.text_input(key="trace_subject").set_value(subj)
        at.button(key="run_trace").click()          # clicked; both sessions then run at once
    failures: list = []

    def run(at):
        try:
            at.run()
        except Exception as err:  # noqa: BLE001
            failures.append(err)

    threads = [threading.Thread(target=run, args=(at,)) for at in apps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    for at, ref in zip(apps, alone):
        assert not at.exception, at.exception
        got = at.session_state[STATE_KEY].trace
        assert got.grids["hidden"].prompt == ref.grids["hidden"].prompt
        for kind in ref.grids:
            np.testing.assert_allclose(got.grids[kind].scores, ref.grids[kind].scores, rtol=0, atol=1e-6)
        np.testing.assert_allclose(got.severed.mlp_severed, ref.severed.mlp_severed, rtol=0, atol=1e-6)


# ---- safe text ------------------------------------------------------------------------------------

def test_user_text_is_inert_markdown_and_changed_words_are_marked():
    from workbench.ui import diff_markdown, escape_md, word_diff

    evil = "<script>x</script> **b** [l](javascript:alert(1)) :red[r] $x$ `c`"
    md = escape_md(evil)
    assert unescape(md) == evil                                       # reads as typed
    assert not re.search(r"(?<!\\)[<>*\[\]()`$:]", md)               # every markup char escaped
    assert word_diff("plays the piano well", "plays the violin well") == [
        ("plays", False), ("the", False), ("violin", True), ("well", False)]
    out = diff_markdown("plays the piano", "plays the <b>violin</b>")
    assert out == r"plays the :orange-background[\<b\>violin\</b\>]"
