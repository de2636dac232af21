"""Charts of an edit: EditResult / metric dicts → plotly figures (pure functions, no Streamlit).

    delta_norm_chart(result)      ‖ΔW‖ per edited layer, absolute, relative to ‖W‖, output change
                                  (log axes when the layers differ by 100× or more)
    per_edit_chart(result)        final z loss and ‖δ‖/‖h‖ per edit
    contribution_chart(result)    ‖δᵢ‖ per edit, largest first: which facts moved the model most
    metrics_chart(pre, post)      ES / PS / NS / S before and after (percent)
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.charts.labels import plot_safe

BEFORE, AFTER = "#9aa5b1", "#1f77b4"


def delta_norm_chart(result, title: str | None = None) -> go.Figure:
    """Panels over the edited layers: ‖ΔW‖_F, ‖ΔW‖_F / ‖W‖_F and, for methods with key statistics,
    the output change on the corpus (`core.memit.output_change`, percent)."""
    layers = list(result.layers)
    x = layers
    changes = getattr(result, "output_change", None) or {}
    panels = ["‖ΔW‖ (Frobenius)", "‖ΔW‖ / ‖W‖"] + (["output change on the corpus (%)"] if changes else [])
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels, horizontal_spacing=0.1)
    fig.add_trace(go.Bar(x=x, y=[result.delta_norms[l] for l in layers], marker_color=AFTER,
                         name="‖ΔW‖", hovertemplate="layer %{x}<br>‖ΔW‖ = %{y:.4g}<extra></extra>"),
                  row=1, col=1)
    fig.add_trace(go.Bar(x=x, y=[result.relative_norms[l] for l in layers], marker_color="#ff7f0e",
                         name="‖ΔW‖/‖W‖", hovertemplate="layer %{x}<br>relative = %{y:.3g}<extra></extra>"),
                  row=1, col=2)
    if changes:
        fig.add_trace(go.Bar(x=x, y=[100 * changes.get(l, float("nan")) for l in layers],
                             marker_color="#2ca02c", name="output change",
                             hovertemplate="layer %{x}<br>RMS change of the layer's output on the "
                             "corpus = %{y:.2f} %<extra></extra>"), row=1, col=3)
    for col in range(1, len(panels) + 1):
        fig.update_xaxes(title_text="layer (W_out of the MLP)", tickmode="array", tickvals=layers,
                         row=1, col=col)
    # Norms that differ by orders of magnitude between layers (the demo model's key room: layer 0
    # ~1e2, layer 1 ~1e7) leave the small layers as invisible bars on a linear axis.
    for col, values in ((1, result.delta_norms), (2, result.relative_norms)):
        if wide_spread([values[l] for l in layers]):
            fig.update_yaxes(type="log", exponentformat="power", title_text="log scale", row=1, col=col)
    fig.update_layout(title=title or f"Weight change norms per layer ({result.method.upper()}, "
                      f"{len(result.requests)} edits)", showlegend=False, template="plotly_white",
                      height=340, width=380 * len(panels))
    return fig


def wide_spread(values, ratio: float = 100.0) -> bool:
    """Whether positive values span at least `ratio` (max / min): then a log axis shows them all."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v)) and float(v) > 0]
    return len(vals) >= 2 and max(vals) / min(vals) >= ratio


def per_edit_chart(result, title: str | None = None) -> go.Figure:
    """Per edit: final loss of its target z (Eq. 16) and ‖δ‖/‖h‖ (how far z moved from h)."""
    df = result.per_edit
    labels = [plot_safe(f"{s} → {t}") for s, t in zip(df["subject"], df["target_new"])]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("final z loss", "‖δ‖ / ‖h‖"), horizontal_spacing=0.12)
    if "loss" in df:
        fig.add_trace(go.Histogram(x=df["loss"], marker_color=AFTER, name="loss", nbinsx=30,
                                   hovertemplate="loss %{x}<br>%{y} edits<extra></extra>"), row=1, col=1)
    if "delta_norm" in df and "h_norm" in df:
        ratio = [d / h if h else math.nan for d, h in zip(df["delta_norm"], df["h_norm"])]
        fig.add_trace(go.Scatter(x=list(range(len(ratio))), y=ratio, mode="markers", text=labels,
                                 marker_color="#ff7f0e", name="‖δ‖/‖h‖",
                                 hovertemplate="%{text}<br>‖δ‖/‖h‖ = %{y:.3g}<extra></extra>"), row=1, col=2)
        fig.update_xaxes(title_text="edit", row=1, col=2)
    fig.update_xaxes(title_text="loss (NLL + KL + decay)", row=1, col=1)
    fig.update_yaxes(title_text="edits", row=1, col=1)
    fig.update_layout(title=title or "Targets z per edit", showlegend=False, template="plotly_white",
                      height=340, width=760)
    return fig


def contribution_chart(result, top: int = 30) -> go.Figure:
    """‖δᵢ‖ = ‖zᵢ − hᵢᴸ‖ per edit (Eq. 16's target shift), largest first: how far each fact had
    to move the hidden state at the last subject token."""
    pe = result.per_edit
    fig = go.Figure()
    if "delta_norm" in pe and len(pe):
        part = pe.sort_values("delta_norm", ascending=False).head(top)
        labels = [plot_safe(f"{s} → {t}") for s, t in zip(part["subject"], part["target_new"])]
        fig.add_trace(go.Bar(x=part["delta_norm"], y=labels, orientation="h", marker_color="#6a3d9a",
                             hovertemplate="%{y}<br>‖δ‖ = %{x:.4g}<extra></extra>"))
    fig.update_layout(title={"text": f"Per-edit contribution ‖zᵢ − hᵢᴸ‖ (top {top})"},
                      xaxis_title="norm of the target change δᵢ", yaxis={"autorange": "reversed"},
                      height=max(260, 22 * min(top, len(pe)) + 120), template="plotly_white")
    return fig


def metrics_chart(pre: dict, post: dict, keys=("ES", "PS", "NS", "S"), title: str | None = None) -> go.Figure:
    """Grouped bars: each metric before and after the edit (percent; missing values left out)."""
    def val(d, k):
        v = d.get(k)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    fig = go.Figure()
    for name, d, color in (("before", pre, BEFORE), ("after", post, AFTER)):
        ys = [val(d, k) for k in keys]
        fig.add_trace(go.Bar(x=list(keys), y=ys, name=name, marker_color=color,
                             text=[f"{y:.1f}" if y is not None else "" for y in ys], textposition="outside",
                             hovertemplate=f"{name}<br>%{{x}} = %{{y:.1f}} %<extra></extra>"))
    fig.update_layout(barmode="group", title=title or "Edit metrics before and after (percent)",
                      yaxis={"range": [0, 110], "title": "percent"}, template="plotly_white",
                      height=360, width=560, legend={"orientation": "h", "y": -0.15})
    return fig
