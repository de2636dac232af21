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


def test_reload_restores_the_session_and_a_new_tab_starts_clean(tiny_app):
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
        loader.get_ledger().revert(run.batch_id, handle_of(tiny_app))


def test_two_tabs_keep_their_own_draft_and_the_menu_reopens_a_session(tiny_app):
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
    assert any(x.endswith(f"{os.path.basename(tiny_app)} · R [1] · 1 row") for x in labels), labels
    assert "open now" in labels                                  # b's own session, without Open
    open_a = b.button(key=f"open_session_{sa.session_id}")
    assert open_a.label == "Open"
    open_a.click().run()
    assert not b.exception, b.exception
    now = b.session_state[STATE_KEY]
    assert now.session_id == sa.session_id and now.edit_layers == [1]
    assert b.query_params[SESSION_PARAM] == sa.session_id


def test_unreadable_session_in_the_url_is_a_message_and_a_new_session(tiny_app):
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


# ---- the page, deleting, pruning, duplicated tabs ---------------------------------------------

def saved_on_page(page: str, layers: list[int]) -> str:
    """A session saved while its tab showed `page`; returns its id."""
    at = open_page(page)
    s = at.session_state[STATE_KEY]
    s.edit_layers = layers
    at.run()
    assert not at.exception, at.exception
    return s.session_id


def test_a_restored_session_reopens_on_its_page(tiny_app):
    from workbench import session_store, state

    sid = saved_on_page("trace", [1])
    assert session_store.read_summary(state.sessions_root() / sid)["page"] == "trace"
    at = new_app()                                           # the URL names the session, not a page
    at.query_params[SESSION_PARAM] = sid
    at.run()
    assert not at.exception, at.exception
    assert at.text_input(key="trace_prompt").value == ""     # the Causal trace page
    assert at.session_state[STATE_KEY].session_id == sid and at.query_params[SESSION_PARAM] == sid
    # moving to another page is saved (summary only: the state itself did not change)
    folder = state.sessions_root() / sid
    stamp = (folder / session_store.STATE_FILE).stat().st_mtime_ns
    at.switch_page("../pages/edit.py").run()
    assert session_store.read_summary(folder)["page"] == "edit"
    assert (folder / session_store.STATE_FILE).stat().st_mtime_ns == stamp
    explicit = new_app()                                     # a URL that names a page keeps it
    explicit.query_params[SESSION_PARAM] = sid
    explicit.switch_page("../pages/results.py").run()
    assert not explicit.exception and not explicit.text_input
    assert any("No edit in this session yet" in i.value for i in explicit.info)
    assert session_store.read_summary(folder)["page"] == "results"
    # from the Sessions menu of a tab on another page: the page the session was on last
    other = open_page("history")
    other.session_state["sessions_menu"] = True
    other.run()
    other.button(key=f"open_session_{sid}").click().run()
    assert not other.exception, other.exception
    assert other.session_state[STATE_KEY].session_id == sid
    assert any("No edit in this session yet" in i.value for i in other.info)         # Results
    assert not [b for b in other.button if b.key == "undo"]                          # not History


def test_a_new_session_is_not_saved_for_moving_between_pages(tiny_app):
    from workbench import state

    at = open_page("trace")
    at.switch_page("../pages/results.py").run()
    assert not (state.sessions_root() / at.session_state[STATE_KEY].session_id).exists()


def test_the_menu_deletes_a_session_after_asking_never_the_open_one(tiny_app):
    from workbench import state

    old = saved_on_page("model", [2])
    at = new_app().run()
    s = at.session_state[STATE_KEY]
    s.edit_layers = [0]
    at.session_state["sessions_menu"] = True
    at.run()
    assert [b.key for b in at.button if b.key == f"delete_session_{s.session_id}"] == []   # not its own
    at.button(key=f"delete_session_{old}").click().run()
    assert [w.value for w in at.warning if "Delete this session?" in w.value]
    assert (state.sessions_root() / old).is_dir()                                        # asked only
    at.button(key="cancel_delete_session").click().run()
    assert not [w for w in at.warning if "Delete this session?" in w.value]
    assert (state.sessions_root() / old).is_dir()
    at.button(key=f"delete_session_{old}").click().run()
    at.button(key="confirm_delete_session").click().run()
    assert not at.exception, at.exception
    assert not (state.sessions_root() / old).exists()
    assert [t.value for t in at.toast if t.value == "Session deleted."]
    assert not [b for b in at.button if b.key == f"open_session_{old}"]
    assert (state.sessions_root() / s.session_id).is_dir()                               # its own stays


def test_old_sessions_are_pruned_when_a_tab_starts(tiny_app, monkeypatch):
    import time

    from workbench import state

    monkeypatch.setenv(state.KEEP_SESSIONS_ENV, "0")                     # no count limit here
    monkeypatch.setenv(state.KEEP_SESSION_DAYS_ENV, "30")
    old, kept, opened = (saved_on_page("model", [i]) for i in (1, 2, 3))
    long_ago = time.time() - 40 * 86400
    for sid in (old, opened):
        os.utime(state.sessions_root() / sid / "state.json", (long_ago, long_ago))
    at = new_app()
    at.query_params[SESSION_PARAM] = opened                             # old, but the one this tab opens
    at.run()
    assert not at.exception, at.exception
    assert not (state.sessions_root() / old).exists()
    assert (state.sessions_root() / kept).is_dir() and (state.sessions_root() / opened).is_dir()
    assert at.session_state[STATE_KEY].edit_layers == [3]


@pytest.fixture
def tabs(monkeypatch):
    """Each AppTest instance as its own browser tab (AppTest gives all one Streamlit session id),
    connected while its name is in the returned set."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    from workbench import state

    live: set[str] = set()
    monkeypatch.setattr(state, "tab_id", lambda: f"tab-{id(get_script_run_ctx().session_state._state)}")
    monkeypatch.setattr(state.owners(), "_is_live", lambda tab: tab in live)
    return live


def tab_of(at) -> str:
    return f"tab-{id(at._session_state._state)}"


def test_a_duplicated_tab_continues_as_a_copy(tiny_app, tabs):
    from workbench import state

    a = new_app()
    tabs.add(tab_of(a))
    a.run()
    a.session_state[STATE_KEY].edit_layers = [1]
    a.run()
    first = a.session_state[STATE_KEY].session_id
    b = new_app()                                               # the tab duplicated: same URL
    tabs.add(tab_of(b))
    b.query_params[SESSION_PARAM] = first
    b.run()
    assert not b.exception, b.exception
    sb = b.session_state[STATE_KEY]
    copy = sb.session_id
    assert copy != first and b.query_params[SESSION_PARAM] == copy
    assert sb.edit_layers == [1]                                # a copy of the saved session
    assert [t for t in b.toast if "open in another tab too" in t.value and first in t.value]
    sb.edit_layers = [2]
    b.run()
    a.run()
    assert a.session_state[STATE_KEY].session_id == first and not a.toast
    assert state.restore(first)[0].edit_layers == [1]           # b did not overwrite a
    assert state.restore(copy)[0].edit_layers == [2]
    # b's menu: a's session is open elsewhere — Open makes a copy, Delete is off
    b.session_state["sessions_menu"] = True
    b.run()
    assert b.button(key=f"delete_session_{first}").disabled
    assert "copy" in b.button(key=f"open_session_{first}").help
    # tab a disconnects; a reload (a new tab with a's URL) takes a's session over, no copy
    tabs.discard(tab_of(a))
    c = new_app()
    tabs.add(tab_of(c))
    c.query_params[SESSION_PARAM] = first
    c.run()
    assert c.session_state[STATE_KEY].session_id == first and not c.toast
    # a comes back (its connection resumed) and runs again: now it is the one that copies
    tabs.add(tab_of(a))
    a.run()
    assert not a.exception, a.exception
    assert a.session_state[STATE_KEY].session_id not in (first, copy)
    assert a.query_params[SESSION_PARAM] == a.session_state[STATE_KEY].session_id
    assert [t for t in a.toast if "open in another tab too" in t.value]
