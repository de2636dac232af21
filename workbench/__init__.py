"""MEMIT Workbench: Streamlit app, CLI and chart builders on top of `core`."""
