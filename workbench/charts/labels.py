"""Label hygiene for plotly: user text (prompts, tokens, subjects) is data, never markup."""

from __future__ import annotations


def plot_safe(text) -> str:
    """Text for plotly labels and titles. Plotly reads '<b>', '<a href>' … in labels as markup,
    so angle brackets become look-alike quotes."""
    return str(text).replace("<", "‹").replace(">", "›")
