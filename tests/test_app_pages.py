"""AppTest: every page renders; the model, trace and learn pages; two sessions at once; user text
is shown inert. Helpers and the app's model: tests/app_helpers.py."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.app_helpers import (
    array, errors, handle_of, new_app, open_page, plotly_specs, unescape,
)
from workbench.state import STATE_KEY


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
    rest = at.dataframe[0].value                       # the other facts, each shown once
    assert "Family" not in list(rest["property"])
    assert dict(zip(rest["property"], rest["value"]))["Edited module"] == handle.info()["mlp_out_path"]


def test_model_page_bad_folder_is_readable_and_keeps_model(app_model):
    at = new_app().run()
    at.text_input[0].set_value("/nonexistent/model-folder")
    at.button[0].click().run()
    assert not at.exception, at.exception
    msgs = errors(at)
    assert any("does not exist" in m and "/nonexistent/model-folder" in m for m in msgs), msgs
    assert at.session_state["workbench_state"].model_name == app_model
    assert {m.label for m in at.metric} >= {"Layers"}      # the card of the old model is still there


def test_model_page_hub_id_offline_is_a_clear_message(app_model):
    at = new_app().run()
    at.text_input[0].set_value("some-org/not-on-this-machine")
    at.button[0].click().run()
    assert not at.exception, at.exception
    msgs = errors(at)
    assert len(msgs) == 1 and "could not be fetched from the HuggingFace hub" in msgs[0], msgs
    assert at.session_state[STATE_KEY].model_name == app_model


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

def test_trace_downloads_carry_the_numbers_and_an_error_clears_the_old_result(app_model):
    import json

    from workbench import trace_flow

    at = open_page("trace")
    at.button[0].click().run()                                         # a demo-world example
    at.button(key="run_trace").click().run()
    full = at.session_state[STATE_KEY].trace
    assert full is not None and not errors(at)
    mlp = full.grids["mlp"]
    table = trace_flow.grid_table(mlp)                                 # "Grid as CSV"
    assert len(table) == mlp.scores.size
    assert table["p_answer"].to_numpy().reshape(mlp.scores.shape) == pytest.approx(mlp.scores)
    assert table["indirect_effect"].to_numpy() == pytest.approx(mlp.scores.ravel() - mlp.corrupted_prob)
    s0, s1 = mlp.subject_span
    assert table[table["subject_token"]]["token_index"].unique().tolist() == list(range(s0, s1))
    data = json.loads(trace_flow.trace_json(full))                      # "Whole trace as JSON"
    assert np.array(data["traces"]["hidden"]["scores"]) == pytest.approx(full.grids["hidden"].scores)
    assert data["suggested_layers"] == full.suggestion.layers and data["tokens"] == mlp.tokens
    # the same page, a subject the prompt lacks: the error, and nothing of the old prompt left
    at.text_input(key="trace_subject").set_value("Atlantis")
    at.button(key="run_trace").click().run()
    assert not at.exception, at.exception
    assert [m.split(":")[1].strip() for m in errors(at)] == ["subject"]
    assert at.session_state[STATE_KEY].trace is None
    assert not [sp for sp in plotly_specs(at) if sp["data"][0]["type"] == "heatmap"]
    assert not any("press Trace" in i.value for i in at.info)           # the error says it all


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
