"""Tracing figures: the plotted numbers are the result's numbers; PNG export renders offline."""

from __future__ import annotations

import numpy as np
import pytest

from core.layer_select import suggest_layers
from core.trace_avg import AveragedSevered, AveragedTrace, CATEGORIES
from core.tracing import TraceResult
from core.tracing_severed import SeveredResult
from workbench.charts.export import figure_to_png, find_browser
from workbench.charts.trace import (
    average_curves, average_figure, average_heatmap, severed_chart, token_labels, trace_heatmap,
    trace_heatmaps,
)

TOKENS = ["The", " Eiff", "el", " Tower", " is", " in"]


def make_trace(kind="hidden") -> TraceResult:
    scores = np.linspace(0.05, 0.8, 6 * 4).reshape(6, 4)
    return TraceResult(prompt="The Eiffel Tower is in", subject="Eiffel Tower", kind=kind,
                       scores=scores, clean_prob=0.8, corrupted_prob=0.05, tokens=TOKENS,
                       subject_span=(1, 4), answer=" Paris", answer_id=7,
                       settings={"window": 10, "noise": 3.0, "noise_level": 0.3})


def make_severed() -> SeveredResult:
    normal = np.array([0.3, 0.5, 0.4, 0.1])
    return SeveredResult(prompt="The Eiffel Tower is in", subject="Eiffel Tower", token=3,
                         normal=normal, mlp_severed=np.array([0.2, 0.2, 0.3, 0.1]),
                         attn_severed=normal - 0.01, clean_prob=0.8, corrupted_prob=0.05,
                         tokens=TOKENS, subject_span=(1, 4), answer=" Paris", answer_id=7, settings={})


def make_average() -> AveragedTrace:
    effects = {k: {c: np.arange(4) * 0.1 + i for i, c in enumerate(CATEGORIES)} for k in ("hidden", "mlp", "attn")}
    sev = AveragedSevered(np.array([0.3, 0.5, 0.4, 0.1]), np.array([0.2, 0.2, 0.3, 0.1]),
                          np.array([0.29, 0.49, 0.39, 0.09]))
    return AveragedTrace(n_facts=5, n_layers=4, n_skipped_wrong=1, n_skipped_invalid=0,
                         effects=effects, counts={c: 5 for c in CATEGORIES}, clean_prob=0.7,
                         corrupted_prob=0.1, sigma=0.1, settings={"window": 10}, severed=sev,
                         suggestion=suggest_layers(sev.gap, size=2))


def test_token_labels_mark_subject():
    assert token_labels(TOKENS, (1, 4)) == ["The", " Eiff*", "el*", " Tower*", " is", " in"]
    assert token_labels([" ", "\n"], (0, 0)) == ["' '", "'\\n'"]


def test_heatmap_shows_scores_tokens_and_effects():
    r = make_trace()
    fig = trace_heatmap(r)
    hm = fig.data[0]
    np.testing.assert_array_equal(np.asarray(hm.z), r.scores)
    assert list(fig.layout.yaxis.ticktext) == token_labels(TOKENS, (1, 4))
    assert fig.layout.yaxis.autorange == "reversed"             # tokens run down
    custom = np.asarray(hm.customdata)
    assert custom[2, 3, 0] == "el*"
    assert float(custom[2, 3, 1]) == pytest.approx(r.scores[2, 3] - 0.05)
    assert "P(answer)" in hm.hovertemplate and "indirect effect" in hm.hovertemplate
    assert hm.colorscale[-1][1] != ""                            # a real colour scale
    m = trace_heatmap(make_trace("mlp"))
    assert "10 restored MLP layers" in m.layout.xaxis.title.text


def test_heatmaps_side_by_side():
    fig = trace_heatmaps({k: make_trace(k) for k in ("hidden", "mlp", "attn")})
    assert len(fig.data) == 3
    assert [d.colorscale[-1][1] for d in fig.data] != [fig.data[0].colorscale[-1][1]] * 3


def test_severed_chart_plots_effects_and_gap():
    s = make_severed()
    fig = severed_chart(s, suggestion=suggest_layers(s.gap, size=2))
    bars = {d.name: np.asarray(d.y) for d in fig.data}
    np.testing.assert_allclose(bars["effect of single state"], s.normal - 0.05)
    np.testing.assert_allclose(bars["with MLP severed"], s.mlp_severed - 0.05)
    np.testing.assert_allclose(bars["gap (normal − MLP severed)"], s.gap)
    shapes = fig.layout.shapes
    assert len(shapes) == 1 and shapes[0].x0 == 0.5 and shapes[0].x1 == 2.5   # R = {1, 2}


def test_average_figures():
    avg = make_average()
    hm = average_heatmap(avg, "mlp")
    np.testing.assert_allclose(np.asarray(hm.data[0].z)[2], avg.effects["mlp"]["last_subject"])
    cur = average_curves(avg, "mlp")
    assert len(cur.data) == len(CATEGORIES)
    fig = average_figure(avg)
    assert len(fig.data) == 3 + 4                                 # 3 heatmaps + severed bars and gap
    assert "suggested R = [1, 2]" in fig.layout.title.text


@pytest.mark.skipif(find_browser() is None, reason="no Chrome/Chromium for kaleido")
def test_png_export_renders():
    png = figure_to_png(trace_heatmap(make_trace()), width=500, height=400, scale=1)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import struct
    w, h = struct.unpack(">II", png[16:24])                      # IHDR width, height
    assert (w, h) == (500, 400)
    assert len(png) > 5000                                        # not an empty canvas


def test_user_text_is_never_plotly_markup():
    labels = token_labels(["<b>", "x", "<a href='j'>"], (0, 1))
    assert labels[0] == "‹b›*" and "<" not in "".join(labels)
