"""One session, one tab: which browser tab (Streamlit session) has each workbench session open.

A process-wide registry (`owners()`, held in `st.cache_resource`, locked) that `state.keep_own`
consults on every run; a tab counts as connected while `Runtime.is_active_session` says so. Only
the tabs served by this server process are seen.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import streamlit as st


class Owners:
    """Which tab (Streamlit session id) has each workbench session open, for one server process.

    Shared by all script threads (held by `owners()`), so every access takes the lock. A tab's
    claim lasts while `is_live(tab)` says it is connected; a disconnected tab's claim lapses."""

    MAX_ENTRIES = 512                      # beyond this, claims of disconnected tabs are dropped

    def __init__(self, is_live: Callable[[str], bool]):
        self._is_live = is_live
        self._lock = threading.Lock()
        self._tab_of: dict[str, str] = {}  # workbench session id → tab

    def claim(self, session_id: str, tab: str) -> bool:
        """Make `tab` the owner of `session_id` unless another connected tab is; True when it is now."""
        with self._lock:
            owner = self._tab_of.get(session_id)
            if owner is not None and owner != tab and self._is_live(owner):
                return False
            if len(self._tab_of) >= self.MAX_ENTRIES:
                self._tab_of = {k: t for k, t in self._tab_of.items() if self._is_live(t)}
            self._tab_of[session_id] = tab
            return True

    def release(self, session_id: str, tab: str) -> None:
        with self._lock:
            if self._tab_of.get(session_id) == tab:
                del self._tab_of[session_id]

    def held(self, but: str | None = None) -> set[str]:
        """The sessions open in connected tabs (other than `but`)."""
        with self._lock:
            return {sid for sid, t in self._tab_of.items() if t != but and self._is_live(t)}


def tab_id() -> str | None:
    """This tab's Streamlit session id (None outside a script run)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    return ctx.session_id if ctx is not None else None


def tab_is_live(tab: str) -> bool:
    """Whether the tab's websocket is connected (Runtime.is_active_session: thread-safe). A real
    runtime answers a bool; AppTest's stand-in runtime answers nothing, and no tab counts as live."""
    from streamlit.runtime import Runtime

    return Runtime.exists() and Runtime.instance().is_active_session(tab) is True


@st.cache_resource(show_spinner=False)
def owners() -> Owners:
    """The registry of this server process (one for all sessions)."""
    return Owners(tab_is_live)
