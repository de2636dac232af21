"""Chart readability (found walking the app in a browser): the severed chart's R label sits above
the plot instead of over R's own bars, and the ΔW norm panels switch to a log axis when the layers
differ by orders of magnitude (on a linear axis the small layer was an invisible bar)."""

from __future__ import annotations

from types import SimpleNamespace

from core.layer_select import suggest_layers
from tests.test_trace_charts import make_severed
from workbench.charts.edit import delta_norm_chart, wide_spread
from workbench.charts.trace import severed_chart


def test_severed_chart_labels_r_above_the_plot_area():
    s = make_severed()
    fig = severed_chart(s, suggestion=suggest_layers(s.gap, size=2))        # R = {1, 2}
    notes = [a for a in fig.layout.annotations if "suggested R" in a.text]
    assert len(notes) == 1
    note = notes[0]
    assert note.text == "suggested R = 1…2"
    assert note.yref == "y domain" and note.y == 1 and note.yanchor == "bottom"   # above the bars
    assert note.xref == "x" and note.x == 1.5                                     # centred on R
    shapes = fig.layout.shapes
    assert len(shapes) == 1 and (shapes[0].x0, shapes[0].x1) == (0.5, 2.5)
    assert not severed_chart(s).layout.annotations                                # no R, no label


def edit_result(delta, relative, change=None):
    layers = sorted(delta)
    return SimpleNamespace(layers=layers, delta_norms=delta, relative_norms=relative,
                           output_change=change or {}, method="memit", requests=[None] * 10)


def test_delta_norm_panels_use_a_log_axis_when_layers_differ_by_orders_of_magnitude():
    # layer 0 ~ 1e2, layer 1 ~ 1e7: as measured on the demo model (its key room at layer 0)
    fig = delta_norm_chart(edit_result({0: 310.0, 1: 1.03e7}, {0: 2.1, 1: 9.2e4}, {0: 0.009, 1: 0.063}))
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type == "log"
    assert fig.layout.yaxis.title.text == "log scale"
    assert fig.layout.yaxis3.type is None                    # output change (%) stays linear
    assert list(fig.data[0].y) == [310.0, 1.03e7]            # the values themselves are unchanged

    even = delta_norm_chart(edit_result({3: 40.0, 4: 55.0}, {3: 0.1, 4: 0.12}))
    assert even.layout.yaxis.type is None and even.layout.yaxis2.type is None


def test_wide_spread_needs_two_positive_values_a_hundredfold_apart():
    assert wide_spread([1.0, 100.0]) and not wide_spread([1.0, 99.0])
    assert not wide_spread([0.0, 5.0]) and not wide_spread([7.0]) and not wide_spread([float("nan"), 3.0])


def test_evaluate_names_metrics_and_methods_as_the_other_pages_do():
    import pandas as pd

    from workbench.charts.scaling import comparison_bars, scaling_figure
    from workbench.results_flow import with_method_names

    table = pd.DataFrame([{"method": m, "n": 5, "ES": 90.0, "PS": 80.0, "NS": 70.0, "S": 79.0, "GE": 4.4}
                          for m in ("unedited", "memit", "rome", "ft")])
    bars = comparison_bars(table)
    assert list(bars.data[1].x) == ["Efficacy success (ES)", "Paraphrase success (PS)",
                                    "Neighbourhood success (NS)", "Score (S)"]
    fig = scaling_figure(table.assign(n=[5, 5, 5, 5]))
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:3] == ["Efficacy ES", "Paraphrase PS", "Neighbourhood NS"]
    hovers = {t.hovertemplate.split("<br>")[2].split("=")[0] for t in fig.data if t.xaxis == "x2"}
    assert hovers == {"Paraphrase success (PS), generalization"}
    shown = with_method_names(table)
    assert shown["method"].tolist() == ["unedited", "MEMIT", "ROME", "FT-W"]
    assert table["method"].tolist() == ["unedited", "memit", "rome", "ft"]     # the stored table untouched
    assert with_method_names(pd.DataFrame({"n": [1]}))["n"].tolist() == [1]


def test_evaluate_page_tables_read_method_names(tiny_app):
    import pandas as pd

    from tests.app_helpers import open_page
    from workbench.state import STATE_KEY

    at = open_page("evaluate")
    at.session_state[STATE_KEY].scaling = pd.DataFrame(
        [{"method": m, "n": n, "ES": 90.0, "PS": 80.0, "NS": 70.0, "S": 79.0}
         for n in (1, 10) for m in ("unedited", "memit", "ft")])
    at.run()
    assert not at.exception, at.exception
    shown = at.dataframe[0].value
    assert shown["method"].tolist() == ["unedited", "MEMIT", "FT-W"] * 2
    assert at.session_state[STATE_KEY].scaling["method"].tolist()[:3] == ["unedited", "memit", "ft"]


def test_edit_page_says_which_layers_the_method_will_write(tiny_app):
    from tests.app_helpers import open_page
    from workbench.edit_flow import layers_line
    from workbench.state import STATE_KEY

    assert layers_line("memit", [4, 3, 5], True) == "MEMIT will edit layers R = [3, 4, 5] (from the causal trace)."
    assert layers_line("rome", [3, 4, 5, 6], False) == \
        "ROME will edit layer 4, the middle of R = [3, 4, 5, 6] (the preset for this model)."
    assert layers_line("ft", [0, 1], True) == "FT-W will fine-tune layer 1, the last of R = [0, 1] (from the causal trace)."

    at = open_page("edit")
    at.session_state[STATE_KEY].edit_layers = [0, 1]
    at.run()
    lines = [c.value for c in at.caption if "will " in c.value]
    assert lines == ["MEMIT will edit layers R = [0, 1] (from the causal trace)."], lines
    at.radio(key="method").set_value("ft").run()
    lines = [c.value for c in at.caption if "will " in c.value]
    assert lines == ["FT-W will fine-tune layer 1, the last of R = [0, 1] (from the causal trace)."], lines
