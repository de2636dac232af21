"""The suggested MEMIT edit range R, from the evidence of causal tracing.

MEMIT (Section 4.1, Appendix A) picks R as the layers where the gap between restoring the last
subject token's hidden state normally and restoring it with that token's MLPs severed is largest
(Figure 3; GPT-J: R = {3, …, 8}, 6 of 28 layers). The rule here makes that choice mechanical:

    curve[l]  = mean indirect effect of h_S^l (normal) − the same with the MLPs severed
    R         = the `size` consecutive layers with the largest mean curve value
                (ties → the earliest window); size defaults to round(6/28 · L), at least 1.

When only a single prompt's trace is at hand, the curve is its severed gap, or — for an MLP
trace — the MLP indirect effect at the last subject token. The result carries the curve and
every window's score, so a user sees why R was chosen.

A range is always returned, but it carries a `note` when the evidence does not back it: no
window with a positive mean, or a best window mean below `MIN_SHARE` of the total effect
(clean − corrupted P(answer), when known) — a flat curve whose maximum is noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from core.errors import BadInputError

MIN_SHARE = 0.03   # best window mean below this share of the total effect: not evidence
# (the demo model averaged over 100 facts: 0.046 of 0.83, 5.5 %; a flat single-prompt curve: < 1 %)
RULE = ("R = the {size} consecutive layers with the largest mean {what}; ties go to the earlier "
        "window. Window size = round(6/28 × layers) unless set (GPT-J's R is 6 of its 28 layers).")


@dataclass
class LayerSuggestion:
    """A contiguous layer range and the numbers that chose it."""

    layers: list[int]
    size: int
    start: int
    curve: list[float]           # per-layer evidence (e.g. severed gap), one value per layer
    window_scores: list[float]   # mean of `curve` over layers [s, s+size) for each start s
    source: str                  # what the curve is
    rule: str
    note: str = ""               # set when the evidence does not support any range

    def to_dict(self) -> dict:
        return asdict(self)


def default_size(n_layers: int) -> int:
    """round(6/28 · L), at least 1: GPT-J's |R| relative to its depth."""
    return max(1, int(round(n_layers * 6 / 28)))


def suggest_layers(curve, *, size: int | None = None, source: str = "MLP-severed gap",
                   total_effect: float | None = None) -> LayerSuggestion:
    """The `size` consecutive layers where `curve` has the largest mean (see module docstring).

    total_effect: clean − corrupted P(answer) of the trace(s) behind the curve; when given, a best
    window mean under `MIN_SHARE` of it is flagged in `note` as too weak to pick R.
    """
    c = np.asarray(curve, dtype=np.float64).reshape(-1)
    if c.size == 0 or not np.all(np.isfinite(c)):
        raise BadInputError("needs one finite value per layer", field="curve")
    n = c.size
    if size is None:
        size = default_size(n)
    if int(size) != size or size < 1:
        raise BadInputError(f"must be an integer ≥ 1, got {size}", field="size")
    size = min(int(size), n)
    # Mean over each window [s, s+size): cumulative sums, (n - size + 1,)
    cs = np.concatenate([[0.0], np.cumsum(c)])
    window = (cs[size:] - cs[:-size]) / size
    start = int(np.argmax(window))  # argmax returns the first maximum: ties → earliest window
    note = ""
    if window[start] <= 0:
        note = ("no window has a positive mean: the trace shows no MLP mediation here, so this "
                "range is not backed by evidence")
    elif total_effect is not None and total_effect > 0 and window[start] < MIN_SHARE * total_effect:
        note = (f"weak evidence: the best window's mean ({window[start]:.3g}) is under "
                f"{100 * MIN_SHARE:.0f} % of the total effect of corrupting the subject "
                f"({total_effect:.3g}), so the curve is nearly flat and this range is not backed "
                "by evidence; try another prompt or the average over many facts")
    elif total_effect is not None and total_effect <= 0:
        note = (f"no total effect: corrupting the subject does not lower P(answer) "
                f"(clean − corrupted = {total_effect:.3g}), so nothing here can pick R")
    return LayerSuggestion(
        layers=list(range(start, start + size)), size=size, start=start,
        curve=c.tolist(), window_scores=window.tolist(), source=source,
        rule=RULE.format(size=size, what=source), note=note,
    )


def suggest_from_trace(result, *, size: int | None = None) -> LayerSuggestion:
    """R from one prompt: a SeveredResult's gap, or a TraceResult's effect at the last subject
    token (an MLP trace is the relevant one; hidden/attn traces are accepted and named)."""
    total = float(result.clean_prob - result.corrupted_prob)
    if hasattr(result, "mlp_severed"):
        return suggest_layers(result.gap, size=size, total_effect=total,
                              source="MLP-severed gap at the last subject token (one prompt)")
    last = result.subject_span[1] - 1
    return suggest_layers(result.effects[last], size=size, total_effect=total,
                          source=f"{result.kind} indirect effect at the last subject token (one prompt)")
