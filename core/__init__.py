"""MEMIT Workbench core: model handle, causal tracing, MEMIT editing and evaluation (no UI)."""
