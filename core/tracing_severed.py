"""Severed-path causal tracing (MEMIT paper Figure 3 and Appendix A; ROME Figure 7).

At the last subject token S, restore the hidden state h_S^l of one layer l in the corrupted run
and measure P(answer), three ways:

    normal        nothing else changed (the purple bars: same as the hidden trace's row S);
    mlp severed   the MLP outputs m_S^j of every layer j frozen at their corrupted-run values,
                  so the restored state cannot act through later MLPs at S (green bars);
    attn severed  the attention outputs a_S^j frozen likewise (red bars).

Only layers j > l are frozen: outputs at j ≤ l precede the restored state and already hold their
corrupted values, so "every layer" (the reference code) and "every later layer" are the same test. A large gap normal − mlp severed at layer l means the MLPs
after l mediate the recall; MEMIT's edit range R is where that gap is largest (`core.layer_select`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from core.tracing import PreparedTrace, TraceSettings, prepare_trace
from core.tracing_batch import Patch, cells_per_forward, run_cells, sample_rows

MODES = ("normal", "mlp", "attn")  # what is frozen besides the restoration: nothing, MLPs, attention


@dataclass
class SeveredResult:
    """P(answer) per layer with h at the last subject token restored, by severing mode.

    normal / mlp_severed / attn_severed: (layers,) probabilities (mean over noise samples).
    """

    prompt: str
    subject: str
    token: int                           # index of the last subject token
    normal: np.ndarray
    mlp_severed: np.ndarray
    attn_severed: np.ndarray
    clean_prob: float
    corrupted_prob: float
    tokens: list[str]
    subject_span: tuple[int, int]
    answer: str
    answer_id: int
    settings: dict

    @property
    def gap(self) -> np.ndarray:
        """Indirect effect lost when the MLPs are severed: normal − mlp severed, per layer."""
        return self.normal - self.mlp_severed

    @property
    def n_layers(self) -> int:
        return int(self.normal.shape[0])

    def effects(self) -> dict[str, np.ndarray]:
        """Indirect effects (restored − corrupted) per mode."""
        c = self.corrupted_prob
        return {"normal": self.normal - c, "mlp": self.mlp_severed - c, "attn": self.attn_severed - c}

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("normal", "mlp_severed", "attn_severed"):
            d[k] = getattr(self, k).tolist()
        d["gap"] = self.gap.tolist()
        d["subject_span"] = list(self.subject_span)
        return d


def severed_patches(prep: PreparedTrace, cells: list[tuple[str, int]]) -> list[Patch]:
    """Patches for cells (mode, layer): restore h_S^layer in the cell's rows, and for modes
    "mlp"/"attn" freeze that component's output at S in every later layer to its corrupted value."""
    S, L, dev = prep.settings.samples, prep.handle.n_layers, prep.input_ids.device
    tok = prep.span.last
    hidden_rows: dict[int, list] = {}
    frozen_rows: dict[tuple[int, str], list] = {}
    for c, (mode, layer) in enumerate(cells):
        rows = sample_rows(c, S, dev)
        hidden_rows.setdefault(layer, []).append(rows)
        if mode != "normal":
            for j in range(layer + 1, L):
                frozen_rows.setdefault((j, mode), []).append(rows)
    patches = []
    for j in range(L):
        for comp in ("attn", "mlp"):
            if (j, comp) in frozen_rows:
                r = torch.cat(frozen_rows[(j, comp)])
                toks = torch.full_like(r, tok)
                patches.append(Patch(j, comp, r, toks, prep.frozen[comp][j, r % S]))  # row → sample
        if j in hidden_rows:
            r = torch.cat(hidden_rows[j])
            toks = torch.full_like(r, tok)
            patches.append(Patch(j, "hidden", r, toks, prep.clean_states["hidden"][j, toks]))
    return patches


def run_severed(prep: PreparedTrace, *, batched: bool = True, reuse_prefix: bool = True,
                progress=None) -> SeveredResult:
    """The three severed-path curves at the last subject token, from a prepared trace.
    batched / reuse_prefix as in `core.tracing.run_grid`."""
    handle, S, L = prep.handle, prep.settings.samples, prep.handle.n_layers
    cells = [(mode, layer) for mode in MODES for layer in range(L)]
    max_cells = cells_per_forward(handle, prep.n_tokens, S, prep.settings.memory_mb) if batched else 1
    skip = batched and reuse_prefix   # start from the corrupted run's blocks and tokens < S
    p = run_cells(handle, prep.input_ids, (prep.span.start, prep.span.end), prep.noise,
                  prep.answer_id, len(cells),
                  lambda chunk: severed_patches(prep, [cells[i] for i in chunk]),
                  max_cells, progress=progress, phase="severed",
                  first_layers=[layer + 1 for _, layer in cells] if skip else None,
                  corrupted_hidden=prep.corrupted_hidden if skip else None,
                  first_tokens=[prep.span.last] * len(cells) if skip else None,
                  kv=prep.corrupted_kv if skip else None)
    curves = p.view(len(MODES), L).double().numpy()
    return SeveredResult(
        prompt=prep.prompt, subject=prep.subject, token=prep.span.last,
        normal=curves[0], mlp_severed=curves[1], attn_severed=curves[2],
        clean_prob=prep.clean_prob, corrupted_prob=prep.corrupted_prob, tokens=list(prep.tokens),
        subject_span=(prep.span.start, prep.span.end), answer=prep.answer,
        answer_id=prep.answer_id, settings=prep.settings_dict(),
    )


def trace_severed(handle, prompt: str, subject: str, *, answer: str | None = None,
                  settings: TraceSettings | None = None, batched: bool = True,
                  progress=None) -> SeveredResult:
    """Severed-path trace of one prompt (Figure 3 for a single fact)."""
    prep = prepare_trace(handle, prompt, subject, answer, settings)
    return run_severed(prep, batched=batched, progress=progress)
