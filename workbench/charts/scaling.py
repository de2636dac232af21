"""Scaling curves (MEMIT paper Figure 5) and method-comparison bars: DataFrame → plotly figure.

Input: the tables of `core.scaling` (columns method, n, ES, PS, NS, S, GE, RS, seconds, ...).
The unedited model is drawn as a dotted line, as in Figure 5 ("specificity and fluency should
stay close to the baseline").
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

REFERENCE = "unedited"
METHOD_STYLE = {
    "memit": {"color": "#1f77b4", "name": "MEMIT"},
    "rome": {"color": "#d62728", "name": "ROME"},
    "ft": {"color": "#2ca02c", "name": "FT-W"},
    REFERENCE: {"color": "#555555", "name": "unedited", "dash": "dot"},
}
METRIC_TITLES = {"ES": "Efficacy (ES)", "PS": "Generalization (PS)", "NS": "Specificity (NS)",
                 "NS_outside": "Specificity, subjects outside the batch (NS)",
                 "S": "Score (S)", "GE": "Fluency (GE, bits)", "RS": "Consistency (RS)",
                 "seconds": "Time to compute (s)", "stored": "Stored share (MEMIT, %)"}


def _style(method: str) -> dict:
    return METHOD_STYLE.get(method, {"color": "#9467bd", "name": method})


def _present(df: pd.DataFrame, metrics) -> list[str]:
    """Metrics that are columns with at least one value."""
    return [m for m in metrics if m in df and pd.to_numeric(df[m], errors="coerce").notna().any()]


def scaling_figure(df: pd.DataFrame, metrics=("ES", "PS", "NS", "S", "GE", "stored"),
                   title: str | None = None) -> go.Figure:
    """One panel per metric: value against number of edits n (log x), one line per method that
    has values there (`stored`, the share of its residual MEMIT's most crowded layer could keep,
    exists for MEMIT only: it shows the layers filling up as n grows)."""
    metrics = _present(df, metrics) or ["ES"]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[METRIC_TITLES.get(m, m) for m in metrics],
                        horizontal_spacing=0.06)
    methods = [m for m in dict.fromkeys(df["method"]) if m != REFERENCE] + \
              ([REFERENCE] if (df["method"] == REFERENCE).any() else [])
    for col, metric in enumerate(metrics, start=1):
        for method in methods:
            part = df[df["method"] == method].sort_values("n")
            if pd.to_numeric(part[metric], errors="coerce").isna().all():
                continue
            style = _style(method)
            fig.add_trace(go.Scatter(
                x=part["n"], y=pd.to_numeric(part[metric], errors="coerce"), mode="lines+markers",
                name=style["name"], legendgroup=method, showlegend=col == 1,
                line={"color": style["color"], "dash": style.get("dash", "solid")},
                hovertemplate=f"{style['name']}<br>n=%{{x}}<br>{metric}=%{{y:.1f}}<extra></extra>"),
                row=1, col=col)
        fig.update_xaxes(type="log", title_text="number of edits", row=1, col=col)
        if metric in ("ES", "PS", "NS", "S", "stored"):
            fig.update_yaxes(range=[0, 102], row=1, col=col)
    fig.update_layout(title=title or "Editing performance against number of edits (cf. Figure 5)",
                      height=380, width=max(600, 300 * len(metrics)), template="plotly_white",
                      legend={"orientation": "h", "y": -0.25})
    return fig


def comparison_bars(table: pd.DataFrame, metrics=("ES", "PS", "NS", "S"), title: str | None = None) -> go.Figure:
    """Grouped bars: one group per metric, one bar per method (the unedited model in grey)."""
    metrics = _present(table, metrics) or ["ES"]
    fig = go.Figure()
    for _, row in table.iterrows():
        style = _style(row["method"])
        values = [float(row[m]) if row[m] is not None and not _nan(row[m]) else None for m in metrics]
        fig.add_trace(go.Bar(x=[METRIC_TITLES.get(m, m) for m in metrics], y=values, name=style["name"],
                             marker_color=style["color"], text=[f"{v:.1f}" if v is not None else "" for v in values],
                             textposition="outside"))
    n = int(table["n"].max()) if "n" in table and len(table) else 0
    fig.update_layout(barmode="group", template="plotly_white", height=420, width=760,
                      title=title or f"Methods on the same {n} edit(s)", yaxis={"range": [0, 110], "title": "percent"})
    return fig


def _nan(x) -> bool:
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return True
