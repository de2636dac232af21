"""The app's per-session state: one typed object in `st.session_state`, created once per session.

Every page reads and writes `get()`; nothing else goes into `st.session_state` except widget
keys. Results live here, per browser session, so two sessions never see each other's results.
Nothing a user made is lost on a reload or an app restart:
- the whole state — traces, the averaged trace, the chosen layers, edit runs (metrics, ΔW,
  generations), Evaluate results, the Learn tour, the edit table draft — is saved to
  `<workspace>/app/sessions/<session id>/` (`state.json` + `tensors.safetensors`, see
  `workbench.session_store`) at the end of every script run that changed it, and the draft on
  every edit of the table;
- the URL carries the id (`?session=<id>`, set by `workbench/app.py` on every run), so a reload
  restores the session; a session opened without an id starts a new one whose draft is the most
  recently saved session's draft (or the old `<workspace>/app/draft.json`);
- the page a tab shows goes to the session's `summary.json`: a restored session reopens on it
  (from the Sessions menu, or a URL that names no page; a reload's URL names it already);
- the sidebar's Sessions menu reopens an earlier session, or deletes one (confirmed);
- applied batches are in the edit ledger (`core.ledger`), which the History page reads.
Not saved (process-local or derived): the original weights of a run (`RunRecord.applied`; undo
goes through the ledger), the capacity check, the one-shot flash message.

Retention: when a tab starts, saved sessions beyond the `KEEP_SESSIONS` most recently changed,
and those unchanged for `KEEP_SESSION_DAYS`, are deleted — never the tab's own, never one open
in another connected tab, never one changed in the last day (`PRUNE_GRACE_DAYS`).

One session, one tab: `keep_own` (every run) makes the tab that opened a session its owner in a
process-wide registry (`workbench.tab_owners`); a second connected tab that opens the same id (a duplicated
tab) continues as a copy under a new id, so neither overwrites the other's work. Tabs are told
apart by Streamlit's session id and counted as connected by `Runtime.is_active_session`; only
tabs served by this process are seen (a second server on the same workspace is not).
The model itself is shared by all sessions (see `workbench.loader`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from core.paths import workspace_dir
from workbench import session_store
from workbench.state_codec import SAVED, transient
from workbench.tab_owners import owners, tab_id

LOG = logging.getLogger("workbench.state")
STATE_KEY = "workbench_state"
SESSION_PARAM = "session"              # the URL query parameter that names the session
DEFAULT_PAGE = "model"                 # the page a new tab opens on (url_path of workbench/app.py's pages)
DEFAULT_MODEL_ENV = "WORKBENCH_DEFAULT_MODEL"
# Retention of saved sessions (applied when a tab starts; see prune_sessions). The environment
# variables override the defaults; 0 means no limit.
KEEP_SESSIONS = 50                     # the most recently changed sessions kept
KEEP_SESSIONS_ENV = "WORKBENCH_KEEP_SESSIONS"
KEEP_SESSION_DAYS = 90                 # a session unchanged for longer is deleted
KEEP_SESSION_DAYS_ENV = "WORKBENCH_KEEP_SESSION_DAYS"
PRUNE_GRACE_DAYS = 1                   # a session changed more recently is never deleted
DRAFT_COLUMNS = ["subject", "relation", "prompt", "target_new", "target_true",
                 "paraphrase_prompts", "neighborhood_prompts", "generation_prompts"]


def default_model_name() -> str:
    """The model the app opens with: `WORKBENCH_DEFAULT_MODEL` or the shipped demo model."""
    return os.environ.get(DEFAULT_MODEL_ENV) or "demo"


@dataclass
class RunRecord:
    """One edit run of this session, as the Results page shows it."""

    method: str
    requests: list                        # list[core.requests.EditRequest]
    result: Any                           # core.memit.EditResult
    applied: Any = transient()            # core.editing.AppliedEdit (None once undone; not saved)
    metrics_pre: Any = None               # pandas.DataFrame, per edit, before the edit
    metrics_post: Any = None              # pandas.DataFrame, per edit, after the edit
    generations: Any = None               # pandas.DataFrame: prompt, kind, before, after
    batch_id: Any = None                  # ledger id once recorded
    model_key: tuple = ()                 # loader key of the model the edit was applied to
    seconds: float = 0.0                  # wall time of the whole run
    after_trace: Any = None               # trace of one of its facts after the edit


@dataclass
class WorkbenchState:
    """Everything a session has chosen or computed."""

    session_id: str = field(default_factory=session_store.new_id)
    # model choice (the handle itself is cached and shared; see workbench.loader)
    model_name: str = field(default_factory=default_model_name)
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    # trace page
    trace_prompt: str = ""
    trace_subject: str = ""
    trace: Any = None                     # core.tracing result (hidden / mlp / attn)
    severed: Any = None                   # severed-path result
    trace_avg: Any = None                 # averaged trace over facts
    suggestion: Any = None                # suggested layer range with its evidence
    edit_layers: list[int] | None = None  # chosen with "use these layers for editing"
    # edit page: the editor shows `draft_base` under a key that changes with `draft_version`
    # (a new base resets the editor); `draft_rows` is the table as the user sees it now.
    draft_rows: list[dict] = field(default_factory=list)
    draft_base: list[dict] = field(default_factory=list, metadata={SAVED: False})
    draft_version: int = 0
    method: str = "memit"
    capacity: Any = transient()           # DataFrame from edit_flow.capacity_table (derived, not saved)
    capacity_for: Any = transient()       # edit_flow.capacity_signature of the batch it was read for
    # results
    runs: list[RunRecord] = field(default_factory=list)
    # evaluate page
    comparison: Any = None                # core.scaling.Comparison
    scaling: Any = None                   # DataFrame from core.scaling.run_scaling
    # one-shot message shown after a rerun (e.g. "Batch 3 undone")
    flash: str | None = transient()
    # learn page
    learn_step: int = 0
    learn: dict = field(default_factory=dict)
    # what the session folder holds now (session_store.Mark; process-local)
    store_mark: Any = transient()
    # the page this tab shows (saved in summary.json, not state.json: moving between pages is
    # not a change that makes a new session worth writing)
    page: str = transient(DEFAULT_PAGE)
    reopen: Any = transient()             # (page, from any page?) to switch to once after a restore
    delete_pending: str | None = transient()   # a saved session the Sessions menu asks to confirm deleting

    @property
    def last_run(self) -> RunRecord | None:
        return self.runs[-1] if self.runs else None

    @property
    def editor_key(self) -> str:
        return f"edit_table_{self.draft_version}"

    def set_draft(self, rows: list[dict]) -> None:
        """Replace the whole table (examples, upload, clear) and persist it."""
        self.draft_rows = [clean_row(r) for r in rows]
        self.draft_base = list(self.draft_rows)
        self.draft_version += 1
        save(self)

    def update_draft(self, rows: list[dict]) -> None:
        """The user edited the table: persist what it shows now (the editor keeps its base)."""
        rows = [clean_row(r) for r in rows]
        if rows != self.draft_rows:
            self.draft_rows = rows
            save(self)


def clean_row(row: dict) -> dict:
    """A draft row with exactly the table's columns, as stripped strings ('' when missing)."""
    out = {}
    for c in DRAFT_COLUMNS:
        v = row.get(c)
        out[c] = "" if v is None or (isinstance(v, float) and v != v) else str(v).strip()
    return out


# ---- saved sessions ---------------------------------------------------------------------------

def sessions_root() -> Path:
    return workspace_dir() / "app" / "sessions"


def saved_sessions(limit: int | None = None) -> list[tuple[str, float, dict]]:
    """Saved sessions, most recent first: (id, when saved, `summary()` as saved)."""
    return session_store.list_sessions(sessions_root(), limit=limit)


def legacy_draft_path() -> Path:
    """The one workspace-wide draft of earlier versions (read once, for a first new session)."""
    return workspace_dir() / "app" / "draft.json"


def load_legacy_draft() -> list[dict]:
    try:
        data = json.loads(legacy_draft_path().read_text())
        return [clean_row(r) for r in data.get("rows", []) if isinstance(r, dict)]
    except (OSError, ValueError, AttributeError):
        return []


def summary(s: WorkbenchState) -> dict:
    """What the Sessions menu shows of a saved session."""
    traces = [s.trace, s.trace_avg, s.learn.get("trace"), *(r.after_trace for r in s.runs)]
    return {"model": s.model_name, "traces": sum(t is not None for t in traces), "runs": len(s.runs),
            "draft_rows": len(s.draft_rows), "layers": s.edit_layers,
            "evaluations": (s.comparison is not None) + (s.scaling is not None), "page": s.page}


def save(s: WorkbenchState) -> None:
    """Write the session to its folder if it changed since the last write; never raises."""
    try:
        s.store_mark = session_store.save(s, sessions_root() / s.session_id, s.store_mark, summary(s))
    except Exception:  # noqa: BLE001 (a failed save must not break the page; the next run retries)
        LOG.exception("could not save session %s", s.session_id)


def new_session() -> WorkbenchState:
    """A new session; its draft is the most recently saved session's (or the legacy draft).

    Nothing is written until the user changes something."""
    saved = saved_sessions(limit=1)
    draft = (session_store.read_field(sessions_root() / saved[0][0], "draft_rows", []) if saved
             else load_legacy_draft())
    draft = [clean_row(r) for r in draft if isinstance(r, dict)] if isinstance(draft, list) else []
    s = WorkbenchState(draft_rows=draft, draft_base=list(draft))
    s.store_mark = session_store.mark(s)
    return s


def restore(session_id) -> tuple[WorkbenchState | None, list[str]]:
    """The saved session `session_id` (None when there is none or it cannot be read) and what to
    tell the user about it."""
    if not session_store.valid_id(session_id) or not (sessions_root() / session_id).is_dir():
        return None, []
    try:
        loaded = session_store.load(sessions_root() / session_id, WorkbenchState)
    except Exception as err:  # noqa: BLE001 (SessionError, or a bug: either way a new session, not a crash)
        LOG.warning("session %s cannot be restored: %s", session_id, err)
        return None, [f"Saved session {session_id} could not be read ({err}); this is a new session."]
    s = loaded.obj
    s.session_id, s.store_mark = session_id, loaded.mark
    s.draft_base = list(s.draft_rows)                # the editor starts from the table as saved
    page = (loaded.mark.summary or {}).get("page")
    if isinstance(page, str) and page:
        s.page = page
    s.reopen = (s.page, False)
    if loaded.problems:
        LOG.warning("session %s restored without: %s", session_id, "; ".join(loaded.problems))
        return s, [f"Some results of session {session_id} could not be restored: "
                   + ", ".join(p.split(" (")[0].removeprefix("state.") for p in loaded.problems)]
    return s, []


def start(session_id=None) -> tuple[WorkbenchState, list[str]]:
    """The state a new browser session starts with: the saved one its URL names, else a new one."""
    s, messages = restore(session_id)
    return (s or new_session()), messages


def get() -> WorkbenchState:
    """This session's state, created on first use (restored when the URL names a saved session;
    old saved sessions are pruned then)."""
    if STATE_KEY not in st.session_state:
        s, messages = start(st.query_params.get(SESSION_PARAM))
        st.session_state[STATE_KEY] = s
        prune_sessions(protect={s.session_id})
        for m in messages:
            st.toast(m, icon=":material/warning:", duration="long")
    return st.session_state[STATE_KEY]


def page_to_reopen(s: WorkbenchState, shown: str) -> str | None:
    """Once after a restore: the page the session was on, when this run shows another — after the
    Sessions menu always; in a new tab only when it opened on the default page (a URL that names a
    page, as a reload's does, is kept)."""
    if s.reopen is None:
        return None
    (page, anywhere), s.reopen = s.reopen, None
    return page if page != shown and (anywhere or shown == DEFAULT_PAGE) else None


def open_session(session_id: str) -> None:
    """Switch this browser session to a saved one (a callback: the next run shows it, on its page)."""
    s, messages = restore(session_id)
    if s is None:
        st.toast(messages[0] if messages else "That session is no longer saved.", icon=":material/warning:")
        return
    if STATE_KEY in st.session_state:
        old = st.session_state[STATE_KEY]
        save(old)
        if (tab := tab_id()) is not None:
            owners().release(old.session_id, tab)
    for key in list(st.session_state):               # widgets start over, as after a reload
        del st.session_state[key]
    s.reopen = (s.page, True)
    st.session_state[STATE_KEY] = s
    st.query_params[SESSION_PARAM] = s.session_id
    for m in messages:
        st.toast(m, icon=":material/warning:", duration="long")


# ---- retention --------------------------------------------------------------------------------

def _setting(env: str, default: int) -> int:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
        if value < 0:
            raise ValueError(raw)
        return value
    except ValueError:
        LOG.warning("%s=%r is not a whole number ≥ 0; using %d", env, raw, default)
        return default


def retention() -> tuple[int | None, float | None]:
    """(sessions kept, age limit in seconds) — None where there is no limit."""
    keep = _setting(KEEP_SESSIONS_ENV, KEEP_SESSIONS)
    days = _setting(KEEP_SESSION_DAYS_ENV, KEEP_SESSION_DAYS)
    return keep or None, days * 86400.0 if days else None


def retention_text() -> str:
    """The policy in words, for the Sessions menu."""
    keep, max_age = retention()
    rules = [f"all but the {keep} most recent" if keep else "",
             f"any unchanged for {max_age / 86400:.0f} days" if max_age else ""]
    if not any(rules):
        return "Saved sessions are kept until you delete them."
    return (f"When a tab opens, older sessions are deleted: {' and '.join(r for r in rules if r)} "
            f"(never one open in a tab, never one changed in the last {PRUNE_GRACE_DAYS * 24} hours).")


def prune_sessions(protect=()) -> list[str]:
    """Apply the retention policy (see the module docstring); never raises. Returns the ids deleted."""
    keep, max_age = retention()
    try:
        gone = session_store.prune(sessions_root(), keep, max_age, set(protect) | owners().held(),
                                   grace_s=PRUNE_GRACE_DAYS * 86400.0)
    except Exception:  # noqa: BLE001 (retention must never break a tab's start)
        LOG.exception("could not prune saved sessions")
        return []
    if gone:
        LOG.info("deleted %d old saved session(s): %s", len(gone), ", ".join(gone))
    return gone


def delete_saved(session_id: str) -> None:
    """Delete a saved session (a callback of the Sessions menu, after its confirmation) — never
    this tab's own, nor one open in another connected tab."""
    s = get()
    s.delete_pending = None
    if session_id == s.session_id or session_id in owners().held(but=tab_id()):
        st.toast("That session is open (here or in another tab); it was not deleted.",
                 icon=":material/warning:")
        return
    if session_store.delete(sessions_root(), session_id):
        st.toast("Session deleted.", icon=":material/delete:")


# ---- one tab per session (the registry: workbench.tab_owners) ---------------------------------

def keep_own(s: WorkbenchState) -> None:
    """Claim this tab's session (every run). When another connected tab has it open — this tab is
    a duplicate, or the other took it over while this one was disconnected — this tab continues as
    a copy under a new id (written in full at the end of the run) and says so."""
    tab = tab_id()
    if tab is None or owners().claim(s.session_id, tab):
        return
    old, s.session_id, s.store_mark = s.session_id, session_store.new_id(), None
    owners().claim(s.session_id, tab)
    LOG.info("session %s is open in another tab: this tab continues as %s", old, s.session_id)
    st.toast(f"Session {old} is open in another tab too, so this tab continues as a copy of it, "
             f"session {s.session_id}: neither tab overwrites the other's work.",
             icon=":material/tab_duplicate:", duration="long")
