"""AppTest: a session's results survive a reload (same `?session=` id), a new tab without the id
starts clean but with the latest draft, and the sidebar's Sessions menu reopens a session.

Runs on a tiny random GPT-2 (no key statistics needed: the edit is FT-W), see tests/app_helpers.py."""

from __future__ import annotations

import os

import pytest

from tests.app_helpers import array, errors, handle_of, new_app, open_page, plotly_specs, unescape
from workbench.state import SESSION_PARAM, STATE_KEY

ROW = {"subject": "Miles Davis", "relation": "", "prompt": "{} plays the", "target_new": "chess",
       "target_true": "trumpet"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tests.app_helpers import default_model, save_app_model

    name = str(tmp_path_factory.mktemp("session-model"))
    save_app_model(name)
    with default_model(name):
        yield name


def reopen(session_id: str | None, page: str):
    """A new browser session (a reload) with `?session=<id>` in the URL, then `page`."""
    at = new_app()
    if session_id:
        at.query_params[SESSION_PARAM] = session_id
    at.run()
    assert not at.exception, at.exception
    at.switch_page(f"../pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


def heatmap_z(at):
    maps = [sp for sp in plotly_specs(at) if sp["data"] and sp["data"][0]["type"] == "heatmap"]
    assert len(maps) == 1
    return array(maps[0]["data"][0]["z"])


def test_reload_restores_the_session_and_a_new_tab_starts_clean(tiny_model):
    from workbench import loader

    at = open_page("trace")
    at.text_input(key="trace_prompt").set_value("Miles Davis plays the")
    at.text_input(key="trace_subject").set_value("Miles Davis")
    at.button(key="run_trace").click().run()
    at.button(key="use_layers").click().run()
    assert not at.exception and not errors(at), (at.exception, errors(at))
    s = at.session_state[STATE_KEY]
    assert at.query_params[SESSION_PARAM] == s.session_id
    scores, layers = s.trace.grids["hidden"].scores, list(s.trace.suggestion.layers)
    assert s.edit_layers == layers
    # an FT-W edit of one typed row, through the Edit page
    at.switch_page("../pages/edit.py").run()
    at.button(key="clear_table").click().run()                 # (a new session starts with the latest draft)
    at.session_state[s.editor_key] = {"edited_rows": {}, "added_rows": [ROW], "deleted_rows": []}
    at.run()
    at.radio(key="method").set_value("ft").run()
    at.button(key="run_edit").click().run()
    assert not at.exception and not errors(at), (at.exception, errors(at))
    run = s.last_run
    assert run is not None and run.method == "ft"
    try:
        # a reload: same id in the URL → the trace, the layers, the run and the draft are back
        back = reopen(s.session_id, "results")
        got = back.session_state[STATE_KEY]
        assert got is not s and got.session_id == s.session_id
        assert not any("No edit in this session yet" in i.value for i in back.info)
        assert back.selectbox(key="result_run").options == [f"Batch {run.batch_id} · FT-W (fine-tuning) · 1 edit(s)"]
        metrics = [d.value for d in back.dataframe if "metric" in d.value.columns][0]
        shown = [d.value for d in at.dataframe if "metric" in d.value.columns][0]
        assert metrics["after"].tolist() == pytest.approx(shown["after"].tolist(), nan_ok=True)
        assert got.runs[0].applied is None and got.runs[0].result.layers == run.result.layers
        back.switch_page("../pages/trace.py").run()
        assert not back.exception, back.exception
        assert back.text_input(key="trace_prompt").value == "Miles Davis plays the"
        assert heatmap_z(back) == pytest.approx(scores)
        assert got.edit_layers == layers
        assert any(f"R = {layers}" in x.value for x in back.success)
        assert [r["subject"] for r in got.draft_rows] == ["Miles Davis"]
        # a new tab without the id: a new, empty session, but with the latest draft
        fresh = reopen(None, "results")
        new = fresh.session_state[STATE_KEY]
        assert new.session_id != s.session_id and fresh.query_params[SESSION_PARAM] == new.session_id
        assert any("No edit in this session yet" in i.value for i in fresh.info)
        assert new.trace is None and new.edit_layers is None and new.runs == []
        assert [r["subject"] for r in new.draft_rows] == ["Miles Davis"]
    finally:
        loader.get_ledger().revert(run.batch_id, handle_of(tiny_model))


def test_two_tabs_keep_their_own_draft_and_the_menu_reopens_a_session(tiny_model):
    a = new_app().run()
    sa = a.session_state[STATE_KEY]
    sa.set_draft([ROW])
    sa.edit_layers = [1]
    a.run()                                                      # saved at the end of the run
    b = new_app().run()
    sb = b.session_state[STATE_KEY]
    assert sb.session_id != sa.session_id and [r["subject"] for r in sb.draft_rows] == ["Miles Davis"]
    b.switch_page("../pages/edit.py").run()
    b.button(key="clear_table").click().run()
    assert not b.exception, b.exception
    assert sb.draft_rows == []
    assert [r["subject"] for r in reopen(sa.session_id, "model").session_state[STATE_KEY].draft_rows] == \
        ["Miles Davis"]                                          # tab b did not overwrite tab a's draft
    # tab b opens session a from the sidebar menu
    b.session_state["sessions_menu"] = True
    b.run()
    labels = [unescape(c.value) for c in b.sidebar.caption]
    assert any(x.endswith(f"{os.path.basename(tiny_model)} · R [1] · 1 row") for x in labels), labels
    assert "open now" in labels                                  # b's own session, without Open
    open_a = b.button(key=f"open_session_{sa.session_id}")
    assert open_a.label == "Open"
    open_a.click().run()
    assert not b.exception, b.exception
    now = b.session_state[STATE_KEY]
    assert now.session_id == sa.session_id and now.edit_layers == [1]
    assert b.query_params[SESSION_PARAM] == sa.session_id


def test_unreadable_session_in_the_url_is_a_message_and_a_new_session(tiny_model):
    from workbench import state

    a = new_app().run()
    sid = a.session_state[STATE_KEY].session_id
    a.session_state[STATE_KEY].edit_layers = [2]
    a.run()
    (state.sessions_root() / sid / "state.json").write_text("{ not json")
    at = new_app()
    at.query_params[SESSION_PARAM] = sid
    at.run()
    assert not at.exception, at.exception
    assert at.session_state[STATE_KEY].session_id != sid
    assert [t.value for t in at.toast if "could not be read" in t.value and sid in t.value]
