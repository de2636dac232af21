"""Trace after edit: where does the new memory live, and did a neighbour's stay where it was?

Runs the causal trace (`core.tracing.trace_kinds`) on an edited fact before and after the edit
(after: answer = the new object) and on a neighbour — another subject with the same relation —
after the edit, answering what the model now predicts for it. If MEMIT wrote the fact into the
MLPs of R, the edited fact's MLP effect after the edit concentrates at the last subject token
in those layers, and the neighbour's trace looks like it did before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.errors import BadInputError
from core.ledger_io import live_weights, set_weights
from core.tracing import TraceResult, trace_kinds


@dataclass
class AfterEditTrace:
    prompt: str
    subject: str
    target_new: str
    edited: dict[str, TraceResult]                       # kind -> trace after the edit
    before: dict[str, TraceResult] | None = None         # the same prompt before the edit
    neighbour_prompt: str | None = None
    neighbour_subject: str | None = None
    neighbour: dict[str, TraceResult] | None = None      # after the edit
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        conv = lambda d: {k: v.to_dict() for k, v in d.items()} if d else None  # noqa: E731
        return {"prompt": self.prompt, "subject": self.subject, "target_new": self.target_new,
                "edited": conv(self.edited), "before": conv(self.before),
                "neighbour_prompt": self.neighbour_prompt, "neighbour_subject": self.neighbour_subject,
                "neighbour": conv(self.neighbour), "notes": self.notes}


def find_neighbour(request, subjects=None) -> tuple[str, str] | None:
    """(prompt, subject) of the request's first neighbourhood prompt whose subject is known:
    the longest name of `subjects` (default: the demo world's subjects) found in it."""
    if not request.neighborhood_prompts:
        return None
    if subjects is None:
        try:
            from core.world_io import load_facts

            subjects = set(load_facts()["subject"])
        except BadInputError:
            return None
    for prompt in request.neighborhood_prompts:
        found = [s for s in subjects if s in prompt and s != request.subject]
        if found:
            return prompt, max(found, key=len)
    return None


def trace_after_edit(handle, edit, *, index: int = 0, neighbour: tuple[str, str] | None = None,
                     kinds=("hidden", "mlp"), settings=None, before: bool = True,
                     progress=None) -> AfterEditTrace:
    """Causal traces around an edit (see module docstring).

    edit: an EditResult (applied for the traces, then reverted bit-exactly) or an AppliedEdit
    already in the model (its originals are swapped in for the 'before' trace and put back).
    index: which request of the edit to trace. neighbour: (prompt, subject); default
    `find_neighbour` on the request's neighbourhood prompts. The model ends as it started.
    """
    from core.editing import apply_edit, revert

    is_applied = hasattr(edit, "originals")
    result = edit.result if is_applied else edit
    if not 0 <= index < len(result.requests):
        raise BadInputError(f"{index} is not a request of this edit (0..{len(result.requests) - 1})", field="index")
    req = result.requests[index]
    nb = neighbour or find_neighbour(req)
    out = AfterEditTrace(prompt=req.filled, subject=req.subject, target_new=req.target_new, edited={})
    if nb is None:
        out.notes.append("no neighbour traced: give one as (prompt, subject)")

    def run(prompt, subject, answer):
        return trace_kinds(handle, prompt, subject, answer=answer, kinds=kinds, settings=settings, progress=progress)

    def after():
        out.edited = run(req.filled, req.subject, req.target_new)
        if nb is not None:
            out.neighbour_prompt, out.neighbour_subject = nb
            out.neighbour = run(nb[0], nb[1], None)

    with handle.lock:
        if is_applied:
            if before:
                edited_w = live_weights(handle, edit.originals)
                set_weights(handle, edit.originals)
                try:
                    out.before = run(req.filled, req.subject, req.target_true)
                finally:
                    set_weights(handle, edited_w)
            after()
        else:
            if before:
                out.before = run(req.filled, req.subject, req.target_true)
            applied = apply_edit(handle, result)
            try:
                after()
            finally:
                revert(handle, applied)
    return out
