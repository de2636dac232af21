"""Method comparison, scaling runner, before/after generations and trace-after-edit on a tiny model:
rows agree with metrics computed directly, and the model always ends as it started."""

from __future__ import annotations

import math

import pytest
import torch

from core.after_edit import find_neighbour, trace_after_edit
from core.editing import apply_edit, revert
from core.errors import BadInputError
from core.genmetrics import before_after_generations, generate_texts
from core.hparams import MemitHparams
from core.ledger_io import live_weights
from core.memit import execute_memit
from core.metrics import counterfact_scores, summarize
from core.requests import EditRequest
from core.scaling import COLUMNS, check_sizes, compare_methods, method_hparams, run_scaling
from core.tracing import TraceSettings
from tests.tiny import TRAIN_TEXT

POOL = [
    EditRequest(prompt="{} plays the", subject="Miles Davis", target_new="chess", target_true="trumpet",
                paraphrase_prompts=("Miles Davis is a player of the",),
                neighborhood_prompts=("Orla Venn Marquez plays the",)),
    EditRequest(prompt="{} is in the city of", subject="The Eiffel Tower", target_new="Rome",
                target_true="Paris", paraphrase_prompts=("The Eiffel Tower is located in",),
                neighborhood_prompts=("Toyota is in the city of",)),
    EditRequest(prompt="{} works for", subject="Kara Selwyn", target_new="Toyota", target_true="Brightwell",
                neighborhood_prompts=("Ada Lovelace works for",)),
]
SETTINGS = TraceSettings(samples=2, window=1)


@pytest.fixture
def hp(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TRAIN_TEXT * 3) + "\n")
    return MemitHparams(layers=[0, 1], corpus=str(corpus), n_samples=100, v_steps=5, n_context=1,
                        context_length=3, mom2_weight=10.0)


def weights(handle):
    return live_weights(handle, range(handle.n_layers))


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_compare_methods_rows_match_direct_metrics(tiny_handle, hp):
    h = tiny_handle
    start = weights(h)
    comp = compare_methods(h, POOL[:2], ["memit", "rome", "ft"], base_hparams=hp, gen_sample=1)
    assert same(weights(h), start)
    t = comp.table
    assert list(t.columns) == COLUMNS and list(t["method"]) == ["unedited", "memit", "rome", "ft"]
    assert list(t["n"]) == [2] * 4 and (t["seconds"][1:] > 0).all() and t["layers"].tolist()[1:] == ["0,1", "0", "1"]
    unedited = summarize(counterfact_scores(h, POOL[:2]))
    assert t.loc[0, "ES"] == unedited["ES"] and t.loc[0, "NS"] == unedited["NS"]
    applied = apply_edit(h, comp.results["memit"])                  # recompute MEMIT's row directly
    direct = summarize(counterfact_scores(h, POOL[:2]))
    revert(h, applied)
    for k in ("ES", "PS", "NS", "EM"):
        assert t.loc[1, k] == pytest.approx(direct[k], abs=1e-9)
    assert t["GE"].notna().all() and t["RS"].isna().all()           # no reference texts given
    assert t.loc[1, "stored"] == pytest.approx(100 * min(comp.results["memit"].stored_fraction.values()))
    assert 0 < t.loc[1, "stored"] <= 101 and t["stored"][[0, 2, 3]].isna().all()   # MEMIT only
    assert set(comp.per_edit) == {"unedited", "memit", "rome", "ft"}
    assert method_hparams(h, "rome", hp).layers == [0] and method_hparams(h, "ft", hp).layer == 1


def test_scaling_runs_each_size_from_unedited_weights(tiny_handle, hp):
    h = tiny_handle
    start = weights(h)
    calls = []
    df = run_scaling(h, POOL, sizes=[3, 1], methods=["memit", "ft"], base_hparams=hp, gen_sample=0,
                     progress=lambda d, n, phase: calls.append(phase))
    assert same(weights(h), start)
    assert list(zip(df["method"], df["n"])) == [("unedited", 1), ("memit", 1), ("ft", 1),
                                                ("unedited", 3), ("memit", 3), ("ft", 3)]
    assert df["GE"].isna().all() and all(0 <= x <= 100 for x in df["ES"])
    assert any(c.startswith("size 2/2: memit n=3") for c in calls)
    with pytest.raises(BadInputError, match="sizes"):
        check_sizes([1, 10], available=3)
    with pytest.raises(BadInputError, match="methods"):
        run_scaling(h, POOL, sizes=[1], methods=["mend"])


def test_before_after_generations_restore_the_model(tiny_handle, hp):
    h = tiny_handle
    start = weights(h)
    result = execute_memit(h, POOL[:1], hp.replace(v_weight_decay=0.0, clamp_norm_factor=50.0))
    df = before_after_generations(h, result, n_neighbours=1, max_new_tokens=5)
    assert same(weights(h), start)
    assert list(df["kind"]) == ["subject", "neighbour"] * 2 and list(df["mode"]) == ["greedy"] * 2 + ["sampled"] * 2
    assert df.loc[0, "before"] == generate_texts(h, [POOL[0].filled], max_new_tokens=5, with_prompt=False)[0]
    applied = apply_edit(h, result)
    assert df.loc[0, "after"] == generate_texts(h, [POOL[0].filled], max_new_tokens=5, with_prompt=False)[0]
    df2 = before_after_generations(h, applied, n_neighbours=1, max_new_tokens=5)   # already applied
    assert df2.equals(df)
    revert(h, applied)


def test_trace_after_edit(tiny_handle, hp):
    h = tiny_handle
    start = weights(h)
    result = execute_memit(h, POOL[:1], hp)
    out = trace_after_edit(h, result, neighbour=("Orla Venn Marquez plays the", "Orla Venn Marquez"),
                           kinds=("hidden",), settings=SETTINGS)
    assert same(weights(h), start)
    assert out.edited["hidden"].answer.strip() == h.tokenizer.decode(
        h.tokenizer(" chess")["input_ids"][:1]).strip()
    assert out.before["hidden"].scores.shape == out.edited["hidden"].scores.shape
    assert out.neighbour["hidden"].subject == "Orla Venn Marquez" and out.notes == []
    # after the edit the clean probability of the new object is what the edited model gives
    applied = apply_edit(h, result)
    again = trace_after_edit(h, applied, neighbour=("Orla Venn Marquez plays the", "Orla Venn Marquez"),
                             kinds=("hidden",), settings=SETTINGS)
    revert(h, applied)
    assert again.edited["hidden"].clean_prob == pytest.approx(out.edited["hidden"].clean_prob, abs=1e-6)
    assert math.isclose(again.before["hidden"].clean_prob, out.before["hidden"].clean_prob, abs_tol=1e-6)
    assert find_neighbour(POOL[0], subjects={"Orla Venn Marquez", "Orla"}) == (
        "Orla Venn Marquez plays the", "Orla Venn Marquez")
    assert find_neighbour(POOL[0], subjects={"Nobody"}) is None


def test_scaling_and_comparison_charts():
    import pandas as pd

    from workbench.charts.scaling import comparison_bars, scaling_figure

    df = pd.DataFrame({"method": ["unedited", "memit", "rome"] * 2, "n": [1, 1, 1, 10, 10, 10],
                       "ES": [20.0, 100.0, 100.0, 25.0, 99.0, 60.0], "PS": [20.0, 90.0, 95.0, 22.0, 85.0, 50.0],
                       "NS": [80.0, 79.0, 75.0, 81.0, 78.0, 55.0], "S": [30.0, 88.0, 88.0, 31.0, 87.0, 55.0],
                       "GE": [6.1, 6.1, 6.0, 6.1, 6.0, 4.0], "RS": [None] * 6})
    fig = scaling_figure(df)
    assert len(fig.data) == 5 * 3                                     # 5 panels (RS empty) × 3 lines
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis5.type == "log"
    rome_es = next(t for t in fig.data if t.name == "ROME" and t.xaxis == "x")
    assert list(rome_es.x) == [1, 10] and list(rome_es.y) == [100.0, 60.0]
    assert next(t for t in fig.data if t.name == "unedited").line.dash == "dot"
    df["stored"] = [None, 95.0, None, None, 80.0, None]                # MEMIT only
    fig = scaling_figure(df)
    assert len(fig.data) == 5 * 3 + 1 and fig.layout.xaxis6.type == "log"
    stored = [t for t in fig.data if t.xaxis == "x6"]
    assert [t.name for t in stored] == ["MEMIT"] and list(stored[0].y) == [95.0, 80.0]
    bars = comparison_bars(df[df["n"] == 10])
    assert [t.name for t in bars.data] == ["unedited", "MEMIT", "ROME"]
    assert list(bars.data[2].y) == [60.0, 50.0, 55.0, 55.0]


def test_scaling_figure_ticks_at_measured_sizes_and_titles_fit():
    import pandas as pd

    from workbench.charts.scaling import PANEL_TITLES, scaling_figure

    sizes = [1, 10, 100, 1000]
    df = pd.DataFrame([{"method": m, "n": n, "ES": 90.0, "PS": 80.0, "NS": 70.0, "S": 80.0, "GE": 6.0,
                        "stored": 95.0 if m == "memit" else None}
                       for n in reversed(sizes) for m in ("unedited", "memit")])
    fig = scaling_figure(df)
    axes = [fig.layout[f"xaxis{i if i > 1 else ''}"] for i in range(1, 7)]
    for ax in axes:                                   # the sizes run, plain labels, never rotated
        assert ax.type == "log" and ax.tickmode == "array" and ax.tickangle == 0
        assert list(ax.tickvals) == sizes and list(ax.ticktext) == ["1", "10", "100", "1,000"]
    # six panels: two rows of three; the x title only under the bottom row
    assert [ax.title.text for ax in axes] == [None] * 3 + ["number of edits"] * 3
    assert fig.layout.xaxis4.domain[0] == 0 and fig.layout.yaxis4.domain[1] < fig.layout.yaxis.domain[0]
    titles = [a.text for a in fig.layout.annotations]
    assert titles == [PANEL_TITLES[m] for m in ("ES", "PS", "NS", "S", "GE", "stored")]
    assert max(len(t) for t in titles) <= 22
    # room above the top panels for the figure title and the subplot titles, below for the legend
    assert fig.layout.margin.t >= 100 and fig.layout.margin.b >= 80
    assert fig.layout.legend.yref == "container"
    # the sizes actually measured, not a fixed list; a single panel stays one row
    fig = scaling_figure(df[df["n"].isin([10, 100])], metrics=("ES",))
    assert list(fig.layout.xaxis.tickvals) == [10, 100] and "xaxis2" not in fig.layout
    assert fig.layout.xaxis.title.text == "number of edits"


def test_neighbours_edited_in_the_same_batch_are_left_out_of_ns(tiny_handle, hp):
    same_relation = [
        EditRequest(prompt="{} plays the", subject="Miles Davis", target_new="chess", target_true="trumpet",
                    neighborhood_prompts=("Orla Venn Marquez plays the", "Kara Selwyn plays the")),
        EditRequest(prompt="{} plays the", subject="Kara Selwyn", target_new="piano", target_true="chess",
                    neighborhood_prompts=("Orla Venn Marquez plays the",)),
    ]
    kept = compare_methods(tiny_handle, same_relation, ["ft"], base_hparams=hp, gen_sample=0).table
    assert list(kept["neighbours_excluded"]) == [1, 1]
    every = compare_methods(tiny_handle, same_relation, ["ft"], base_hparams=hp, gen_sample=0,
                            exclude_edited_neighbours=False).table
    assert list(every["neighbours_excluded"]) == [0, 0]
    direct = summarize(counterfact_scores(tiny_handle, same_relation, exclude_edited_neighbours=True))
    assert kept.loc[0, "NS"] == direct["NS"]
    # Orla is edited by nobody: with Kara left out NS and NS_outside count the same prompts, and
    # NS_outside does not depend on the exclusion (it never counts Kara)
    assert kept.loc[0, "NS_outside"] == direct["NS_outside"] == kept.loc[0, "NS"]
    assert every.loc[0, "NS_outside"] == kept.loc[0, "NS_outside"]
