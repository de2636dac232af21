"""CounterFact evaluation of one batch edit: scores before, edit, scores after, revert.

The routine behind `workbench eval` and the model card of `workbench demo train`. The model is
reverted bit-exactly before this returns (also when scoring after the edit fails).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from core.editing import edit, revert
from core.metrics import counterfact_scores, summarize

SCORES = ("ES", "PS", "NS", "S")
MAGNITUDES = ("EM", "PM", "NM")


@dataclass
class EditEvaluation:
    """Paper scores (percent) before and after editing `n` requests at once."""

    n: int
    method: str
    layers: list[int]
    pre: dict                     # summarize(): ES, PS, NS, S, EM, PM, NM, …
    post: dict
    seconds: dict                 # the edit's phases, plus edit / pre_eval / post_eval / total
    hparams: dict
    notes: list[str] = field(default_factory=list)
    stored_fraction: dict = field(default_factory=dict)   # MEMIT: {layer: median share stored}

    def to_dict(self) -> dict:
        return {"n": self.n, "method": self.method, "layers": list(self.layers),
                "pre": {k: self.pre[k] for k in SCORES}, "post": {k: self.post[k] for k in SCORES},
                "magnitudes": {"pre": {k: self.pre[k] for k in MAGNITUDES},
                               "post": {k: self.post[k] for k in MAGNITUDES}},
                "seconds": dict(self.seconds), "neighbours_excluded": self.post.get("neighbours_excluded", 0),
                "ns_outside": {"pre": self.pre.get("NS_outside"), "post": self.post.get("NS_outside"),
                               "prompts": self.post.get("neighbours_outside", 0)},
                "hparams": dict(self.hparams), "notes": list(self.notes),
                "stored_fraction": {str(k): v for k, v in self.stored_fraction.items()}}


def evaluate_edit(handle, requests, *, method: str = "memit", hparams=None, progress=None,
                  exclude_edited_neighbours: bool = True) -> EditEvaluation:
    """Score `requests` (CounterFact style), edit them all at once, score again, revert."""
    t0 = time.perf_counter()
    pre = summarize(counterfact_scores(handle, requests, progress=progress,
                                       exclude_edited_neighbours=exclude_edited_neighbours))
    t1 = time.perf_counter()
    applied = edit(handle, requests, method=method, hparams=hparams, progress=progress)
    t2 = time.perf_counter()
    try:
        post = summarize(counterfact_scores(handle, applied.result.requests, progress=progress,
                                            exclude_edited_neighbours=exclude_edited_neighbours))
    finally:
        revert(handle, applied)
    t3 = time.perf_counter()
    res = applied.result
    return EditEvaluation(
        n=len(res.requests), method=res.method, layers=list(res.layers), pre=pre, post=post,
        seconds=dict(res.timings, edit=t2 - t1, pre_eval=t1 - t0, post_eval=t3 - t2, total=t3 - t0),
        hparams=dict(res.hparams), notes=list(res.notes), stored_fraction=dict(res.stored_fraction))
