"""MEMIT Workbench — the Streamlit app entry point.

Run with `workbench app` (binds 127.0.0.1) or `streamlit run workbench/app.py`. Pages live in the
project's `pages/` folder, one user task each; this file only sets up the page, the navigation
and the sidebar model card.
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
nav = build_navigation()
with st.sidebar:
    ui.sidebar_card(s)
nav.run()
