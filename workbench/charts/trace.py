"""Causal-tracing figures (MEMIT paper Figures 3 and 8): result dataclass → plotly figure.

- `trace_heatmap` / `trace_heatmaps`: tokens down, layers across, subject tokens marked "*",
  colour = P(answer) with that state restored (Figure 8 for one prompt); hover shows exact values.
- `severed_chart`: indirect effect of h at the last subject token per layer — normal, attention
  severed, MLP severed (Figure 3), with the suggested edit range shaded.
- `average_heatmap` / `average_curves` / `average_figure`: the averaged effects per token category.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.charts.labels import plot_safe

KIND_STYLE = {  # colours of Meng et al.'s figures: hidden purple, MLP green, attention red
    "hidden": {"scale": "Purples", "line": "#6a3d9a", "name": "hidden state", "short": "h"},
    "mlp": {"scale": "Greens", "line": "#238b45", "name": "MLP", "short": "MLP"},
    "attn": {"scale": "Reds", "line": "#cb181d", "name": "attention", "short": "Attn"},
}
CATEGORY_LABELS = {
    "first_subject": "first subject token", "middle_subject": "middle subject tokens",
    "last_subject": "last subject token", "first_subsequent": "first subsequent token",
    "further": "further tokens", "last": "last token",
}


def token_labels(tokens: list[str], span: tuple[int, int]) -> list[str]:
    """Readable token labels; subject tokens get a trailing '*' (as in Figure 8)."""
    out = []
    for i, t in enumerate(tokens):
        label = plot_safe(t.replace("\n", "\\n") if t.strip() else repr(t))
        out.append(label + "*" if span[0] <= i < span[1] else label)
    return out


def _x_title(kind: str, window: int) -> str:
    if kind == "hidden":
        return "single restored layer"
    return f"center of interval of {window} restored {KIND_STYLE[kind]['short']} layers"


def _heatmap_trace(result, *, showscale: bool = True, colorbar_x: float | None = None) -> go.Heatmap:
    T, L = result.scores.shape
    labels = token_labels(result.tokens, tuple(result.subject_span))
    effects = result.scores - result.corrupted_prob
    custom = np.dstack([np.array(labels, dtype=object)[:, None].repeat(L, 1), effects])
    colorbar = {"title": {"text": f"p({plot_safe(result.answer.strip())})"}, "exponentformat": "e"}
    if colorbar_x is not None:
        colorbar["x"] = colorbar_x
    return go.Heatmap(
        z=result.scores, x=list(range(L)), y=list(range(T)), customdata=custom,
        colorscale=KIND_STYLE[result.kind]["scale"], zmin=min(result.corrupted_prob, float(result.scores.min())),
        zmax=float(result.scores.max()), showscale=showscale, colorbar=colorbar,
        hovertemplate=("token %{customdata[0]} · layer %{x}<br>P(answer) = %{z:.5f}"
                       "<br>indirect effect = %{customdata[1]:+.5f}<extra></extra>"),
    )


def _token_axis(fig, result, **where) -> None:
    T = len(result.tokens)
    fig.update_yaxes(tickmode="array", tickvals=list(range(T)),
                     ticktext=token_labels(result.tokens, tuple(result.subject_span)),
                     autorange="reversed", automargin=True, **where)


def trace_heatmap(result, *, title: str | None = None) -> go.Figure:
    """Figure-8-style heatmap of one `TraceResult`."""
    fig = go.Figure(_heatmap_trace(result))
    name = KIND_STYLE[result.kind]["name"]
    fig.update_layout(
        title={"text": title or f"Impact of restoring {name} after corrupted input"
               f"<br><sup>answer {result.answer.strip()!r}: clean p = {result.clean_prob:.3f}, "
               f"corrupted p = {result.corrupted_prob:.3f}</sup>"},
        xaxis_title=_x_title(result.kind, int(result.settings.get("window", 10))),
        height=max(320, 28 * len(result.tokens) + 160), margin={"r": 10},
    )
    _token_axis(fig, result)
    return fig


def trace_heatmaps(results: dict) -> go.Figure:
    """Side-by-side heatmaps of several kinds of the same prompt (dict kind → TraceResult)."""
    kinds = list(results)
    fig = make_subplots(rows=1, cols=len(kinds), horizontal_spacing=0.16,
                        subplot_titles=[f"restoring {KIND_STYLE[k]['name']}" for k in kinds])
    for i, k in enumerate(kinds, start=1):
        r = results[k]
        fig.add_trace(_heatmap_trace(r, colorbar_x=_domain_end(fig, i) + 0.005), row=1, col=i)
        fig.update_xaxes(title_text=_x_title(k, int(r.settings.get("window", 10))), row=1, col=i)
        _token_axis(fig, r, row=1, col=i)
    first = results[kinds[0]]
    fig.update_traces(colorbar_thickness=10)
    fig.update_layout(
        title={"text": f"{plot_safe(repr(first.prompt))} → {plot_safe(repr(first.answer.strip()))} (clean p = {first.clean_prob:.3f}, "
               f"corrupted p = {first.corrupted_prob:.3f})"},
        height=max(340, 28 * len(first.tokens) + 180), width=420 * len(kinds),
    )
    return fig


def _domain_end(fig, i: int) -> float:
    """Right edge (paper coordinates) of the i-th x axis: where that subplot's colourbar goes."""
    axis = fig.layout["xaxis" if i == 1 else f"xaxis{i}"]
    return float(axis.domain[1])


def _severed_curves(severed) -> dict[str, np.ndarray]:
    """Indirect effects per mode from a SeveredResult (probabilities) or AveragedSevered (effects)."""
    if hasattr(severed, "effects") and callable(severed.effects):
        e = severed.effects()
        return {"normal": e["normal"], "attn": e["attn"], "mlp": e["mlp"]}
    return {"normal": severed.normal, "attn": severed.attn_severed, "mlp": severed.mlp_severed}


def _severed_title(severed) -> str:
    if hasattr(severed, "tokens"):
        tok = severed.tokens[severed.token].strip()
        return (f"Indirect effect of h at the last subject token {tok!r} of {severed.prompt!r} "
                f"→ {severed.answer.strip()!r}")
    return "Average indirect effect of h at the last subject token"


def severed_chart(severed, *, suggestion=None, title: str | None = None) -> go.Figure:
    """Figure 3: effect of h at the last subject token, normal vs attention/MLP severed."""
    curves = _severed_curves(severed)
    L = len(curves["normal"])
    layers = list(range(L))
    fig = go.Figure()
    for key, name, colour in (("normal", "effect of single state", KIND_STYLE["hidden"]["line"]),
                              ("attn", "with attention severed", KIND_STYLE["attn"]["line"]),
                              ("mlp", "with MLP severed", KIND_STYLE["mlp"]["line"])):
        fig.add_trace(go.Bar(x=layers, y=curves[key], name=name, marker_color=colour,
                             hovertemplate="layer %{x}<br>indirect effect = %{y:+.5f}<extra>" + name + "</extra>"))
    gap = curves["normal"] - curves["mlp"]
    fig.add_trace(go.Scatter(x=layers, y=gap, name="gap (normal − MLP severed)", mode="lines+markers",
                             line={"color": "black", "dash": "dot"},
                             hovertemplate="layer %{x}<br>gap = %{y:+.5f}<extra></extra>"))
    if suggestion is not None and suggestion.layers:
        x0, x1 = suggestion.layers[0] - 0.5, suggestion.layers[-1] + 0.5
        fig.add_vrect(x0=x0, x1=x1, fillcolor="gold", opacity=0.18, line_width=0, layer="below")
        # The label sits just above the plot area, centred on the band: inside it, it was drawn
        # over the tallest bars (those of R itself).
        fig.add_annotation(x=(x0 + x1) / 2, xref="x", y=1, yref="y domain", yanchor="bottom",
                           showarrow=False, font={"size": 12},
                           text=f"suggested R = {suggestion.layers[0]}…{suggestion.layers[-1]}")
    fig.update_layout(
        barmode="group", title={"text": title or _severed_title(severed)},
        xaxis_title="layer at which the single hidden state is restored", xaxis_dtick=1,
        yaxis_title="indirect effect on P(answer)", legend={"orientation": "h", "y": -0.25},
        yaxis_exponentformat="e",
        height=420,
    )
    return fig


def average_heatmap(avg, kind: str) -> go.Figure:
    """Figure 8 (averaged): token categories down, layers across, colour = mean indirect effect."""
    fig = go.Figure(_average_heatmap_trace(avg, kind))
    fig.update_layout(
        title={"text": f"Average indirect effect of {KIND_STYLE[kind]['name']} over {avg.n_facts} facts"},
        xaxis_title=_x_title(kind, int(avg.settings.get("window", 10))), height=360,
    )
    fig.update_yaxes(autorange="reversed")
    return fig


def _average_heatmap_trace(avg, kind: str, *, colorbar: dict | None = None) -> go.Heatmap:
    cats = list(avg.effects[kind])
    z = np.array([avg.effects[kind][c] for c in cats], dtype=float)
    colorbar = {"title": {"text": "AIE"}, "thickness": 10, "exponentformat": "e", **(colorbar or {})}
    return go.Heatmap(z=z, x=list(range(avg.n_layers)), y=[CATEGORY_LABELS[c] for c in cats],
                      colorscale=KIND_STYLE[kind]["scale"], colorbar=colorbar,
                      hovertemplate="%{y} · layer %{x}<br>mean indirect effect = %{z:+.5f}<extra></extra>")


def average_curves(avg, kind: str = "mlp") -> go.Figure:
    """One line per token category: mean indirect effect against layer."""
    fig = go.Figure()
    for c, v in avg.effects[kind].items():
        width = 4 if c == "last_subject" else 2
        fig.add_trace(go.Scatter(x=list(range(avg.n_layers)), y=v, mode="lines+markers",
                                 name=CATEGORY_LABELS[c], line={"width": width},
                                 hovertemplate="layer %{x}<br>%{y:+.5f}<extra>" + CATEGORY_LABELS[c] + "</extra>"))
    fig.update_layout(
        title={"text": f"Average indirect effect of {KIND_STYLE[kind]['name']} by token ({avg.n_facts} facts)"},
        xaxis_title=_x_title(kind, int(avg.settings.get("window", 10))),
        yaxis_title="mean indirect effect", height=400,
    )
    return fig


def average_figure(avg) -> go.Figure:
    """Overview for reports and PNG export: averaged heatmaps per kind and the severed chart."""
    kinds = list(avg.effects)
    has_sev = avg.severed is not None
    rows = 2 if has_sev else 1
    specs = [[{} for _ in kinds]] + ([[{"colspan": len(kinds)}] + [None] * (len(kinds) - 1)] if has_sev else [])
    titles = [f"{KIND_STYLE[k]['name']}" for k in kinds] + (["severed path at the last subject token"] if has_sev else [])
    fig = make_subplots(rows=rows, cols=len(kinds), specs=specs, subplot_titles=titles,
                        horizontal_spacing=0.16, vertical_spacing=0.18)
    top = fig.layout["yaxis"].domain                                  # first row's vertical extent
    for i, k in enumerate(kinds, start=1):
        bar = {"x": _domain_end(fig, i) + 0.005, "y": top[0], "yanchor": "bottom", "len": top[1] - top[0]}
        fig.add_trace(_average_heatmap_trace(avg, k, colorbar=bar), row=1, col=i)
        fig.update_yaxes(autorange="reversed", showticklabels=(i == 1), row=1, col=i)
        fig.update_xaxes(title_text="layer", row=1, col=i)
    if has_sev:
        for trace in severed_chart(avg.severed).data:
            fig.add_trace(trace, row=2, col=1)
        fig.update_xaxes(title_text="layer", row=2, col=1)
        fig.update_yaxes(title_text="indirect effect", exponentformat="e", row=2, col=1)
        if avg.suggestion is not None:
            s = avg.suggestion.layers
            fig.add_vrect(x0=s[0] - 0.5, x1=s[-1] + 0.5, fillcolor="gold", opacity=0.18, line_width=0, layer="below",
                          row=2, col=1)
    r = f"; suggested R = {avg.suggestion.layers}" if avg.suggestion is not None else ""
    fig.update_layout(
        title={"text": f"Causal tracing averaged over {avg.n_facts} facts{r}"}, barmode="group",
        height=760 if has_sev else 380, width=1300, legend={"orientation": "h", "y": -0.08},
    )
    return fig
