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
# The metrics' names as the Results and History pages give them (the paper's Figure 5 calls
# PS "generalization", NS "specificity" and GE "fluency"; the hover text keeps those roles).
METRIC_TITLES = {"ES": "Efficacy success (ES)", "PS": "Paraphrase success (PS)",
                 "NS": "Neighbourhood success (NS)",
                 "NS_outside": "Neighbourhood success, subjects outside the batch (NS)",
                 "S": "Score (S)", "GE": "Generation entropy (GE, bits)", "RS": "Reference score (RS)",
                 "seconds": "Time to compute (s)", "stored": "Stored share (MEMIT, %)"}
METRIC_ROLES = {"ES": "efficacy", "PS": "generalization", "NS": "specificity",
                "NS_outside": "specificity", "GE": "fluency", "RS": "consistency"}
# Panel titles short enough for a panel a quarter of the page wide; the long names above go in
# the hover text.
PANEL_TITLES = {"ES": "Efficacy ES", "PS": "Paraphrase PS", "NS": "Neighbourhood NS",
                "NS_outside": "NS, outside batch", "S": "Score S", "GE": "Gen. entropy GE (bits)",
                "RS": "Reference RS", "seconds": "Time (s)", "stored": "Stored share % (MEMIT)"}
PANELS_PER_ROW = 4


def _style(method: str) -> dict:
    return METHOD_STYLE.get(method, {"color": "#9467bd", "name": method})


def _present(df: pd.DataFrame, metrics) -> list[str]:
    """Metrics that are columns with at least one value."""
    return [m for m in metrics if m in df and pd.to_numeric(df[m], errors="coerce").notna().any()]


def log_ticks(values) -> tuple[list, list[str]]:
    """Tick positions and plain labels for a log x axis: exactly the batch sizes measured
    (1, 10, 100, 1000, …), not plotly's 1 2 5 10 2 5 … minor labels."""
    ns = sorted({int(v) for v in pd.to_numeric(pd.Series(list(values)), errors="coerce").dropna() if v > 0})
    return ns, [f"{n:,}" for n in ns]


def scaling_figure(df: pd.DataFrame, metrics=("ES", "PS", "NS", "S", "GE", "stored"),
                   title: str | None = None) -> go.Figure:
    """One panel per metric: value against number of edits n (log x), one line per method that
    has values there (`stored`, the share of its residual MEMIT's most crowded layer could keep,
    exists for MEMIT only: it shows the layers filling up as n grows).

    At most four panels per row (six metrics: two rows of three), so each panel keeps room for
    its title and its x ticks, which sit at the measured batch sizes only."""
    metrics = _present(df, metrics) or ["ES"]
    rows = math.ceil(len(metrics) / PANELS_PER_ROW)
    cols = math.ceil(len(metrics) / rows)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[PANEL_TITLES.get(m, m) for m in metrics],
                        horizontal_spacing=0.22 / cols, vertical_spacing=0.3 / rows)
    methods = [m for m in dict.fromkeys(df["method"]) if m != REFERENCE] + \
              ([REFERENCE] if (df["method"] == REFERENCE).any() else [])
    tickvals, ticktext = log_ticks(df["n"])
    for i, metric in enumerate(metrics):
        row, col = divmod(i, cols)
        row, col = row + 1, col + 1
        for method in methods:
            part = df[df["method"] == method].sort_values("n")
            if pd.to_numeric(part[metric], errors="coerce").isna().all():
                continue
            style = _style(method)
            fig.add_trace(go.Scatter(
                x=part["n"], y=pd.to_numeric(part[metric], errors="coerce"), mode="lines+markers",
                name=style["name"], legendgroup=method, showlegend=i == 0,
                line={"color": style["color"], "dash": style.get("dash", "solid")},
                hovertemplate=f"{style['name']}<br>n=%{{x}}<br>{_hover_name(metric)}"
                              "=%{y:.1f}<extra></extra>"),
                row=row, col=col)
        last_row = i + cols >= len(metrics)            # no panel below: name the axis here
        fig.update_xaxes(type="log", tickmode="array", tickvals=tickvals, ticktext=ticktext, tickangle=0,
                         minor={"showgrid": False}, title_text="number of edits" if last_row else None,
                         row=row, col=col)
        if metric in ("ES", "PS", "NS", "NS_outside", "S", "stored"):
            fig.update_yaxes(range=[0, 102], row=row, col=col)
    fig.update_annotations(font_size=14)               # the subplot titles
    fig.update_layout(title=title or "Editing performance against number of edits (cf. Figure 5)",
                      height=80 + 280 * rows + 70, width=max(600, 280 * cols), template="plotly_white",
                      margin={"t": 110, "b": 100, "l": 60, "r": 30},
                      legend={"orientation": "h", "yref": "container", "y": 0.02, "yanchor": "bottom",
                              "x": 0, "xanchor": "left"})
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


def _hover_name(metric: str) -> str:
    """'Paraphrase success (PS), generalization': the page's name and the paper's role."""
    name = METRIC_TITLES.get(metric, metric)
    return f"{name}, {METRIC_ROLES[metric]}" if metric in METRIC_ROLES else name


def _nan(x) -> bool:
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return True
