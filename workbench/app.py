"""MEMIT Workbench — the Streamlit app entry point.

Run with `workbench app` (binds 127.0.0.1) or `streamlit run workbench/app.py`. Pages live in the
project's `pages/` folder, one user task each; this file only sets up the page, the navigation,
the sidebar (model card, Sessions menu), keeps the session id in the URL (`?session=<id>`, so a
reload restores the session) and saves the session at the end of every run (see workbench/state.py).
"""

from __future__ import annotations

import streamlit as st

from workbench import state, ui

st.set_page_config(page_title="MEMIT Workbench", page_icon=":material/neurology:", layout="wide",
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
    sections = {}
    for section, pages in PAGES.items():
        sections[section] = [
            st.Page(ui.page_path(name), title=title, icon=icon, url_path=name, default=name == "model")
            for name, title, icon in pages
        ]
    return st.navigation(sections)


s = state.get()
try:
    # Streamlit drops query parameters on page navigation: put the id back on every run.
    if st.query_params.get(state.SESSION_PARAM) != s.session_id:
        st.query_params[state.SESSION_PARAM] = s.session_id
    nav = build_navigation()
    with st.sidebar:
        ui.sidebar_card(s)
        ui.sessions_menu(s)
    nav.run()
finally:                               # also after st.rerun / st.stop / st.switch_page
    state.save(s)
