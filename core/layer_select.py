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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from core.errors import BadInputError

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


def suggest_layers(curve, *, size: int | None = None, source: str = "MLP-severed gap") -> LayerSuggestion:
    """The `size` consecutive layers where `curve` has the largest mean (see module docstring)."""
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
    return LayerSuggestion(
        layers=list(range(start, start + size)), size=size, start=start,
        curve=c.tolist(), window_scores=window.tolist(), source=source,
        rule=RULE.format(size=size, what=source), note=note,
    )


def suggest_from_trace(result, *, size: int | None = None) -> LayerSuggestion:
    """R from one prompt: a SeveredResult's gap, or a TraceResult's effect at the last subject
    token (an MLP trace is the relevant one; hidden/attn traces are accepted and named)."""
    if hasattr(result, "mlp_severed"):
        return suggest_layers(result.gap, size=size,
                              source="MLP-severed gap at the last subject token (one prompt)")
    last = result.subject_span[1] - 1
    return suggest_layers(result.effects[last], size=size,
                          source=f"{result.kind} indirect effect at the last subject token (one prompt)")
