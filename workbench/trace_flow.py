"""The Trace page's plumbing: demo-world examples and one full trace of a prompt (no math here).

A full trace is one clean run and one corrupted baseline (`core.tracing.prepare_trace`) shared
by the three restoration grids (hidden, MLP, attention) and the severed-path curves, plus the
layer range those suggest (`core.layer_select`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.layer_select import LayerSuggestion, suggest_from_trace
from core.tracing import KINDS, TraceResult, TraceSettings, answer_note, prepare_trace, run_grid
from core.tracing_severed import SeveredResult, run_severed

KIND_LABELS = {"hidden": "Hidden states", "mlp": "MLP outputs", "attn": "Attention outputs"}
KIND_HELP = {
    "hidden": "Restore one layer's whole hidden state h at one token (Figure 8a).",
    "mlp": "Restore the MLP outputs m of a window of layers at one token (Figure 8b).",
    "attn": "Restore the attention outputs a of a window of layers at one token (Figure 8c).",
}


@dataclass
class FullTrace:
    """Everything the Trace page shows for one prompt."""

    grids: dict[str, TraceResult]
    severed: SeveredResult
    suggestion: LayerSuggestion
    notes: list[str] = field(default_factory=list)   # e.g. a multi-token answer traced by its first token


def knowns_path():
    from core.world_io import world_dir

    return world_dir() / "knowns.json"


def example_facts(n: int = 4) -> list:
    """The first n facts of the demo world's knowns file ([] when the world is missing)."""
    from core.trace_avg import load_facts

    path = knowns_path()
    return load_facts(path)[:n] if path.is_file() else []


def run_full_trace(handle, prompt: str, subject: str, answer: str | None,
                   settings: TraceSettings, progress=None) -> FullTrace:
    """Three grids + severed curves from one prepared trace; bad input raises before any run."""
    prep = prepare_trace(handle, prompt, subject, answer or None, settings)
    grids = {k: run_grid(prep, k, progress=progress) for k in KINDS}
    severed = run_severed(prep, progress=progress)
    note = answer_note(handle, prompt, answer or None)
    return FullTrace(grids=grids, severed=severed, suggestion=suggest_from_trace(severed),
                     notes=[note] if note else [])


def run_average(handle, n: int, settings: TraceSettings, progress=None):
    """Averaged trace over up to n demo-world facts the model knows."""
    from core.trace_avg import average_traces, load_facts

    return average_traces(handle, load_facts(knowns_path()), n=n, settings=settings,
                          progress=progress)


def evidence_table(suggestion: LayerSuggestion):
    """Per layer: the evidence value, the mean over the window starting there, and whether the
    layer is in R — the numbers behind the suggestion."""
    import pandas as pd

    n = len(suggestion.curve)
    windows = list(suggestion.window_scores) + [None] * (n - len(suggestion.window_scores))
    return pd.DataFrame({
        "layer": list(range(n)),
        "evidence": suggestion.curve,
        f"mean over layers l…l+{suggestion.size - 1}": windows,
        "in R": [layer in suggestion.layers for layer in range(n)],
    })


# ---- downloads ----------------------------------------------------------------------------------

def grid_table(result: TraceResult):
    """One row per (token, layer) of a grid: P(answer) with that state restored and the indirect
    effect (P − corrupted P), tokens marked when they belong to the subject."""
    import pandas as pd

    T, L = result.scores.shape
    s0, s1 = result.subject_span
    return pd.DataFrame([{"token_index": t, "token": result.tokens[t], "subject_token": s0 <= t < s1,
                          "layer": layer, "kind": result.kind, "p_answer": float(result.scores[t, layer]),
                          "indirect_effect": float(result.scores[t, layer] - result.corrupted_prob)}
                         for t in range(T) for layer in range(L)])


def trace_dict(full: FullTrace) -> dict:
    """The fields of `workbench trace --json` for a full trace."""
    first = next(iter(full.grids.values()))
    return {
        "prompt": first.prompt, "subject": first.subject, "answer": first.answer,
        "answer_id": first.answer_id, "clean_prob": first.clean_prob,
        "corrupted_prob": first.corrupted_prob, "tokens": list(first.tokens),
        "subject_span": list(first.subject_span), "n_layers": first.n_layers,
        "settings": dict(first.settings),
        "traces": {k: {"scores": r.scores.tolist(), "effects": r.effects.tolist()} for k, r in full.grids.items()},
        "severed": full.severed.to_dict(), "suggested_layers": list(full.suggestion.layers),
        "notes": list(full.notes), "suggestion": full.suggestion.to_dict(),
    }


def _json_bytes(obj) -> bytes:
    """Strict JSON (NaN / inf as null), as the CLI's `--json` writes it."""
    import json

    from core.ledger_io import json_safe

    return (json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n").encode()


def trace_json(full: FullTrace) -> bytes:
    return _json_bytes(trace_dict(full))


def average_json(avg) -> bytes:
    """An averaged trace in the format of `workbench trace-avg --json`."""
    return _json_bytes(avg.to_dict())
