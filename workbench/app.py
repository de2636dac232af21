"""MEMIT Workbench — the Streamlit app entry point.

Run with `workbench app` (binds 127.0.0.1) or `streamlit run workbench/app.py`. Pages live in the
project's `pages/` folder, one user task each; this file only sets up the page, the navigation,
the sidebar (model card, Sessions menu), keeps the session id in the URL (`?session=<id>`, so a
reload restores the session), makes sure no two tabs write one session, reopens a restored
session on its page and saves the session at the end of every run (see workbench/state.py).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from workbench import state, ui

# A local icon: a ":material/…:" page icon makes the browser fetch the favicon from
# fonts.gstatic.com, which fails offline. A file path is served by the app itself.
FAVICON = Path(__file__).resolve().with_name("favicon.png")

st.set_page_config(page_title="MEMIT Workbench", page_icon=str(FAVICON), layout="wide",
                   initial_sidebar_state="expanded")

PAGES = {
    "Workbench": [
        ("model", "Model", ":material/memory:"),
        ("trace", "Causal trace", ":material/troubleshoot:"),
        ("edit", "Edit facts", ":material/edit_note:"),
        ("results", "Results", ":material/analytics:"),
        ("history", "History", ":material/history:"),
    ],
    "Study": [
        ("evaluate", "Evaluate", ":material/monitoring:"),
        ("learn", "Learn", ":material/school:"),
    ],
}


def build_navigation():
    """(the page this run shows, every page by name — for st.switch_page)."""
    pages = {name: st.Page(ui.page_path(name), title=title, icon=icon, url_path=name,
                           default=name == state.DEFAULT_PAGE)
             for section in PAGES.values() for name, title, icon in section}
    sections = {section: [pages[name] for name, _, _ in entries] for section, entries in PAGES.items()}
    return st.navigation(sections), pages


s = state.get()
try:
    state.keep_own(s)                  # a duplicated tab continues as a copy under a new id
    # Streamlit drops query parameters on page navigation: put the id back on every run.
    if st.query_params.get(state.SESSION_PARAM) != s.session_id:
        st.query_params[state.SESSION_PARAM] = s.session_id
    nav, pages = build_navigation()
    shown = nav.url_path or state.DEFAULT_PAGE           # the default page's url_path is ""
    if (target := state.page_to_reopen(s, shown)) in pages:
        st.switch_page(pages[target], query_params={state.SESSION_PARAM: s.session_id})
    s.page = shown
    with st.sidebar:
        ui.sidebar_card(s)
        ui.sessions_menu(s)
    nav.run()
finally:                               # also after st.rerun / st.stop / st.switch_page
    state.save(s)
