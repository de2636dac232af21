"""The suggested edit range R: the documented rule on synthetic curves."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import BadInputError
from core.layer_select import default_size, suggest_layers, suggest_from_trace


def test_window_with_largest_mean_is_chosen():
    curve = [0.0, 0.1, 0.5, 0.6, 0.55, 0.2, 0.0, 0.0]
    s = suggest_layers(curve, size=3)
    assert s.layers == [2, 3, 4]
    assert s.start == 2 and s.size == 3
    # Window means, computed by hand: [0.2, 0.4, 0.55, 0.45, 0.25, 0.0/…]
    expected = [np.mean(curve[i:i + 3]) for i in range(6)]
    np.testing.assert_allclose(s.window_scores, expected)
    assert s.curve == curve
    assert "3 consecutive layers" in s.rule


def test_no_positive_evidence_is_flagged():
    assert suggest_layers([0.1, 0.3, 0.2], size=1).note == ""
    s = suggest_layers([-0.01, 0.0, -0.02, -0.03], size=2)
    assert s.layers == [0, 1] and "no MLP mediation" in s.note


def test_ties_go_to_the_earliest_window():
    s = suggest_layers([1.0, 1.0, 0.0, 1.0, 1.0], size=2)
    assert s.layers == [0, 1]


def test_default_size_follows_gptj_ratio():
    assert default_size(28) == 6      # GPT-J: R = {3..8}
    assert default_size(8) == 2
    assert default_size(2) == 1
    assert default_size(48) == 10
    s = suggest_layers(np.arange(8, dtype=float)[::-1])
    assert s.layers == [0, 1]


def test_gptj_like_curve_gives_paper_range():
    """A curve shaped like Figure 3's gap (large in layers 3-8, small after) picks R = {3..8}."""
    gap = np.zeros(28)
    gap[3:9] = [0.10, 0.14, 0.16, 0.15, 0.13, 0.10]
    gap[9:14] = 0.03
    s = suggest_layers(gap)
    assert s.layers == [3, 4, 5, 6, 7, 8]


def test_size_is_clipped_to_the_model():
    s = suggest_layers([0.1, 0.2], size=5)
    assert s.layers == [0, 1] and s.window_scores == pytest.approx([0.15])


@pytest.mark.parametrize("curve, size, field", [
    ([], None, "curve"),
    ([0.1, float("nan")], None, "curve"),
    ([0.1, 0.2], 0, "size"),
    ([0.1, 0.2], 1.5, "size"),
])
def test_bad_input(curve, size, field):
    with pytest.raises(BadInputError) as err:
        suggest_layers(curve, size=size)
    assert err.value.field == field


class _Severed:
    def __init__(self, clean=0.9, corrupted=0.1):
        self.normal = np.array([0.1, 0.5, 0.6, 0.2])
        self.mlp_severed = np.array([0.1, 0.1, 0.2, 0.2])
        self.clean_prob, self.corrupted_prob = clean, corrupted

    @property
    def gap(self):
        return self.normal - self.mlp_severed


class _Trace:
    kind = "mlp"
    subject_span = (1, 3)
    clean_prob, corrupted_prob = 0.8, 0.1
    effects = np.array([[0.0, 0.0, 0.0, 0.0], [0.9, 0.0, 0.0, 0.0], [0.0, 0.0, 0.3, 0.4]])


def test_suggest_from_single_prompt_results():
    assert suggest_from_trace(_Severed(), size=2).layers == [1, 2]
    s = suggest_from_trace(_Trace(), size=2)
    assert s.layers == [2, 3]                 # row of the last subject token (index 2)
    assert "mlp" in s.source
    assert suggest_from_trace(_Severed(), size=2).note == ""     # window mean 0.4 of a total 0.8


def test_weak_evidence_is_flagged_against_the_total_effect():
    # best window mean 0.002 (layers 1-2): 0.5 % of a total effect 0.4 → flagged, R still given
    s = suggest_layers([0.0, 0.002, 0.002, -0.001], size=2, total_effect=0.4)
    assert s.layers == [1, 2] and "weak evidence" in s.note and "0.002" in s.note
    # the same curve against a total effect of 0.03: 6.7 % ≥ 3 % → backed
    assert suggest_layers([0.0, 0.002, 0.002, -0.001], size=2, total_effect=0.03).note == ""
    # exactly at the threshold counts as evidence; just under does not
    assert suggest_layers([0.03, 0.03], size=2, total_effect=1.0).note == ""
    assert "weak evidence" in suggest_layers([0.0299, 0.0299], size=2, total_effect=1.0).note
    # no total effect at all (corruption does not lower P(answer))
    assert "no total effect" in suggest_layers([0.1, 0.2], size=1, total_effect=-0.01).note
    # a single-prompt trace whose corruption barely matters: its gap is large relative to nothing
    flat = _Severed(clean=0.9, corrupted=0.1)
    flat.normal = np.array([0.101, 0.102, 0.1, 0.1])
    flat.mlp_severed = np.array([0.1, 0.1, 0.1, 0.1])
    assert "weak evidence" in suggest_from_trace(flat, size=2).note
