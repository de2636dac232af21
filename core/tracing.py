"""Causal tracing (Meng et al., 2022; MEMIT paper Section 4.1 and Appendix A), on nnsight.

Corrupt the subject: add Gaussian noise to the embeddings of the subject tokens (level = `noise`
× σ, σ the std of the subject-token embeddings unless given), `samples` noisy copies, the same
draws for every restoration. Then restore one state to its clean value and measure how much of
the clean prediction comes back:

    score[t, l] = mean_s P(answer | corrupted run s, state (t, l) restored)        # Fig. 8
    indirect effect = score − P(answer | corrupted)

`kind` says what is restored at (token t, layer l): "hidden" the block output h_t^l, "mlp" the
MLP outputs m_t^j, "attn" the attention outputs a_t^j, for j in a window of `window` layers
centred on l (clipped at the ends; Appendix A uses 10). The grid runs as batched forwards
(`core.tracing_batch`) that recompute only what a restoration can change (`core.tracing_cache`);
cells known in closed form — tokens before the subject cannot see the noise (causal attention),
last-layer states of earlier tokens are never read — are filled without running.

The severed-path trace (Figure 3) is in `core.tracing_severed`; averages over many facts in
`core.trace_avg`; the suggested edit range in `core.layer_select`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from transformers import DynamicCache

from core.errors import BadInputError
from core.subject import SubjectSpan, locate_subject
from core.tracing_batch import (
    Patch, cells_per_forward, clean_forward, corrupted_forward, make_noise, run_cells, sample_rows,
)
from core.tracing_cache import cache_kv, plan_grid, window_layers

KINDS = ("hidden", "mlp", "attn")


@dataclass(frozen=True)
class TraceSettings:
    """How a trace corrupts and restores (defaults: the paper's, Appendix A).

    noise:     noise level as a multiple of `sigma` (3 in the paper).
    sigma:     the scale the noise multiplies; None → std of this prompt's subject-token
               embeddings; pass 1.0 to make `noise` an absolute standard deviation.
    samples:   noisy copies of the prompt (10 in the paper); scores average over them.
    window:    layers restored together for "mlp"/"attn", centred on the layer. None → the
               paper's 10 of GPT-J's 28 layers scaled to the model's depth (`default_window`):
               10 for ≥ 27 layers, 4 for GPT-2 small's 12, 3 for the 8-layer demo model — a
               fixed 10 would restore nearly every layer of a shallow model at once.
    seed:      seed of the noise generator (same noise for every restoration).
    memory_mb: activation memory one batched forward may use; sets the chunk size.
    """

    noise: float = 3.0
    sigma: float | None = None
    samples: int = 10
    window: int | None = None
    seed: int = 1
    memory_mb: float = 256.0

    def validate(self) -> "TraceSettings":
        if not _finite(self.noise) or self.noise <= 0:
            raise BadInputError(f"must be a number > 0, got {self.noise}", field="noise")
        if self.sigma is not None and (not _finite(self.sigma) or self.sigma <= 0):
            raise BadInputError(f"must be a number > 0, got {self.sigma}", field="sigma")
        if int(self.samples) != self.samples or self.samples < 1:
            raise BadInputError(f"must be an integer ≥ 1, got {self.samples}", field="samples")
        if self.window is not None and (not _finite(self.window) or int(self.window) != self.window
                                        or self.window < 1):
            raise BadInputError(f"must be an integer ≥ 1, got {self.window}", field="window")
        if not _finite(self.memory_mb) or self.memory_mb <= 0:
            raise BadInputError(f"must be > 0, got {self.memory_mb}", field="memory_mb")
        return self


def default_window(n_layers: int) -> int:
    """The paper's window (10 layers of GPT-J's 28, Appendix A) scaled to a model's depth:
    round(10 · n_layers / 28), between 1 and 10."""
    return max(1, min(10, round(10 * n_layers / 28)))


def resolve_settings(settings: "TraceSettings | None", n_layers: int) -> "TraceSettings":
    """Validated settings with the window filled in for a model of `n_layers` layers."""
    settings = (settings or TraceSettings()).validate()
    if settings.window is None:
        settings = replace(settings, window=default_window(n_layers))
    return settings


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class TraceResult:
    """One prompt's causal trace for one kind.

    scores: (tokens, layers) P(answer) with that state restored (mean over noise samples).
    effects: scores − corrupted_prob (indirect effects).
    """

    prompt: str
    subject: str
    kind: str
    scores: np.ndarray
    clean_prob: float
    corrupted_prob: float
    tokens: list[str]
    subject_span: tuple[int, int]        # token indices [start, end)
    answer: str                          # the answer token as text
    answer_id: int
    settings: dict                       # TraceSettings fields + noise_level actually used
    skipped_cells: int = 0               # cells filled without a forward (known in closed form)
    shared_cells: int = 0                # cells copied from an identical restoration
    forwards: int = 0                    # corrupted forwards run for the grid
    block_evals: int = 0                 # Σ rows × tokens fed × blocks run over those forwards

    @property
    def effects(self) -> np.ndarray:
        return self.scores - self.corrupted_prob

    @property
    def n_layers(self) -> int:
        return int(self.scores.shape[1])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scores"] = self.scores.tolist()
        d["subject_span"] = list(self.subject_span)
        return d


@dataclass
class PreparedTrace:
    """A validated prompt with its clean run and its corrupted baseline, shared by all traces."""

    handle: object
    prompt: str
    subject: str
    settings: TraceSettings
    input_ids: torch.Tensor              # (1, T)
    span: SubjectSpan
    tokens: list[str]
    answer_id: int
    answer: str
    noise_level: float
    noise: torch.Tensor                  # (S, n_subject_tokens, d), scaled
    clean_prob: float
    corrupted_prob: float
    clean_states: dict = field(repr=False)    # component -> (L, T, d)
    frozen: dict = field(repr=False)          # component -> (L, S, d) at span.last, corrupted run
    corrupted_hidden: torch.Tensor = field(repr=False)   # (L, S, T, d) block outputs, corrupted run
    corrupted_kv: list | None = field(default=None, repr=False)  # per block (keys, values), (S, h, T, hd)

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def settings_dict(self) -> dict:
        return {**asdict(self.settings), "noise_level": self.noise_level}


# ---- validation -----------------------------------------------------------------------------

def encode_prompt(handle, prompt: str, subject: str) -> tuple[torch.Tensor, SubjectSpan]:
    """Token ids (1, T) and subject span; BadInputError naming the field for bad input."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadInputError("the prompt is empty", field="prompt")
    if not isinstance(subject, str) or not subject.strip():
        raise BadInputError("the subject is empty", field="subject")
    span = locate_subject(handle.tokenizer, prompt, subject)
    ids = handle.tokenizer(prompt, return_tensors="pt")["input_ids"]
    if ids.shape[1] > handle.max_length:
        raise BadInputError(f"{ids.shape[1]} tokens, longer than the model's context of "
                            f"{handle.max_length}", field="prompt")
    return ids.to(handle.device), span


def answer_tokens(handle, prompt: str, answer: str) -> list[int]:
    """The tokens of `answer` as the model would read them right after `prompt`.

    A space is put between prompt and answer unless one side already has it; the answer's
    tokens are those the tokenizer adds after the prompt's own (robust to BOS and "▁" prefixes).
    BadInputError (field "answer") when there are none, or the first is unknown to the model or
    only part of a character (byte-level pieces of a character the vocabulary lacks).
    """
    if not isinstance(answer, str) or not answer.strip():
        raise BadInputError("the answer is empty", field="answer")
    tok = handle.tokenizer
    sep = "" if prompt[-1:].isspace() or answer[:1].isspace() else " "
    p_ids = tok(prompt)["input_ids"]
    full = tok(prompt + sep + answer)["input_ids"]
    ids = full[len(p_ids):] if full[:len(p_ids)] == p_ids else tok(sep + answer, add_special_tokens=False)["input_ids"]
    special = set(tok.all_special_ids) - ({tok.unk_token_id} if tok.unk_token_id is not None else set())
    # Special tokens and bare-space pieces ("▁" before a word) carry no answer.
    ids = [i for i in ids if i not in special and tok.decode([i]).strip()]
    n_vocab = int(handle.hf.get_output_embeddings().weight.shape[0])
    if not ids or ids[0] == tok.unk_token_id or ids[0] >= n_vocab:
        raise BadInputError(f"'{answer}' cannot be tokenised by this model's tokenizer", field="answer")
    if "\ufffd" in tok.decode([ids[0]]):
        raise BadInputError(f"'{answer}' starts with part of a character this model's vocabulary "
                            "does not hold as a token, so its probability is not one next-token "
                            "probability; give an answer that starts with a word the model knows",
                            field="answer")
    return [int(i) for i in ids]


def answer_token(handle, prompt: str, answer: str) -> int:
    """The first token of `answer` (`answer_tokens`): what a trace scores, as in the paper."""
    return answer_tokens(handle, prompt, answer)[0]


def answer_note(handle, prompt: str, answer: str | None) -> str | None:
    """A note for the user when `answer` is more than one token: the trace follows its first."""
    if answer is None or not str(answer).strip():
        return None
    ids = answer_tokens(handle, prompt, answer)
    if len(ids) == 1:
        return None
    first = handle.tokenizer.decode([ids[0]]).strip()
    return (f"'{answer.strip()}' is {len(ids)} tokens; the trace follows the probability of its "
            f"first token '{first}' (one next-token probability, as in the paper)")


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise BadInputError(f"unknown kind '{kind}' (one of {', '.join(KINDS)})", field="kind")
    return kind


def subject_sigma(handle, input_ids: torch.Tensor, span: SubjectSpan) -> float:
    """σ: std of the subject tokens' embedding entries (the scale the noise multiplies)."""
    E = handle.hf.get_input_embeddings().weight                                # (V, d)
    return float(E[input_ids[0, span.start:span.end]].float().std())


# ---- the clean run and the corrupted baseline ---------------------------------------------

def prepare_trace(handle, prompt: str, subject: str, answer: str | None = None,
                  settings: TraceSettings | None = None) -> PreparedTrace:
    """Validate everything, then run the clean prompt and the corrupted baseline.

    Nothing runs when any input is bad. The corrupted run also keeps every block output (the
    batched grid starts its rows from them) and the MLP and attention outputs at the last
    subject token, which the severed-path trace freezes.
    """
    settings = resolve_settings(settings, handle.n_layers)
    input_ids, span = encode_prompt(handle, prompt, subject)
    answer_id = answer_token(handle, prompt, answer) if answer is not None else None
    S, L = settings.samples, handle.n_layers
    sigma = settings.sigma if settings.sigma is not None else subject_sigma(handle, input_ids, span)
    level = float(settings.noise * sigma)
    noise = make_noise(S, span.end - span.start, handle.d_model, level, settings.seed,
                       handle.device, handle.dtype)                             # (S, n_subj, d)
    with handle.lock, torch.no_grad():
        probs, clean = clean_forward(handle, input_ids, KINDS)
        if answer_id is None:
            answer_id = int(probs.argmax())                                     # clean top-1
        save = {(j, c): (None if c == "hidden" else span.last) for j in range(L) for c in KINDS}
        cache = DynamicCache(config=handle.config)
        p, saved = corrupted_forward(handle, input_ids, (span.start, span.end), noise, S, [],
                                     answer_id, save=save, cache=cache)
    frozen = {c: torch.stack([saved[(j, c)] for j in range(L)]) for c in ("attn", "mlp")}
    corrupted_hidden = torch.stack([saved[(j, "hidden")] for j in range(L)])   # (L, S, T, d)
    tokens = [handle.tokenizer.decode([i]) for i in input_ids[0].tolist()]
    return PreparedTrace(
        handle=handle, prompt=prompt, subject=subject, settings=settings, input_ids=input_ids,
        span=span, tokens=tokens, answer_id=answer_id,
        answer=handle.tokenizer.decode([answer_id]), noise_level=level, noise=noise,
        clean_prob=float(probs[answer_id]), corrupted_prob=float(p.mean()),
        clean_states=clean, frozen=frozen, corrupted_hidden=corrupted_hidden,
        corrupted_kv=cache_kv(cache, input_ids.shape[1]),
    )


# ---- restorations -------------------------------------------------------------------------

def first_layer(kind: str, layer: int, window: int, n_layers: int) -> int:
    """The first layer a restoration touches (blocks below it match the corrupted run)."""
    return layer if kind == "hidden" else window_layers(layer, window, n_layers).start


def first_block(kind: str, layers: tuple[int, ...]) -> int:
    """The first block a forward restoring `layers` must run: a restored block output is written
    into the corrupted run's copy, so for "hidden" the block after it (`skip_depth`)."""
    return min(layers) + 1 if kind == "hidden" else min(layers)


def restoration_patches(prep: PreparedTrace, kind: str, cells: list[tuple[int, tuple]]) -> list[Patch]:
    """Patches restoring cell c = (token, layers) in rows c·S … c·S+S-1 of a chunk."""
    S, dev = prep.settings.samples, prep.input_ids.device
    clean = prep.clean_states[kind]                                             # (L, T, d)
    rows: dict[int, list] = {}
    toks: dict[int, list] = {}
    for c, (t, layers) in enumerate(cells):
        for j in layers:
            rows.setdefault(j, []).append(sample_rows(c, S, dev))
            toks.setdefault(j, []).append(torch.full((S,), t, dtype=torch.long, device=dev))
    patches = []
    for j in sorted(rows):
        r, t = torch.cat(rows[j]), torch.cat(toks[j])
        patches.append(Patch(j, kind, r, t, clean[j, t]))
    return patches


def run_grid(prep: PreparedTrace, kind: str = "hidden", *, batched: bool = True,
             reuse_prefix: bool = True, prune_positions: bool = True, shortcuts: bool = True,
             progress=None) -> TraceResult:
    """The (tokens × layers) restoration grid of one kind.

    batched=False runs one full forward per (token, layer) cell, every cell (the reference
    loop; for benchmarks and tests). Batched: cells known in closed form are filled and identical
    restorations run once (`plan_grid`, unless shortcuts=False); forwards start from the
    corrupted run's block outputs below the first restored layer (reuse_prefix) and, with
    prune_positions, feed only tokens from the restored one on (`core.tracing_cache`).
    """
    check_kind(kind)
    handle, S = prep.handle, prep.settings.samples
    T, L = prep.n_tokens, handle.n_layers
    plan = plan_grid(prep, kind, shortcuts=batched and shortcuts)
    runs = plan.runs
    max_cells = cells_per_forward(handle, T, S, prep.settings.memory_mb) if batched else 1
    skip = batched and reuse_prefix
    work: dict = {}
    def report_cells(done: int, total: int, phase: str) -> None:
        # counted in grid cells (filled and shared ones finish with the runs)
        progress(round(done * T * L / total), T * L, phase)
    report = report_cells if progress else None

    p = run_cells(handle, prep.input_ids, (prep.span.start, prep.span.end), prep.noise,
                  prep.answer_id, len(runs),
                  lambda chunk: restoration_patches(prep, kind, [runs[i] for i in chunk]),
                  max_cells, progress=report, phase=kind,
                  first_layers=[first_block(kind, layers) for _, layers in runs] if skip else None,
                  corrupted_hidden=prep.corrupted_hidden if skip else None,
                  first_tokens=[t for t, _ in runs] if skip and prune_positions else None,
                  kv=prep.corrupted_kv if skip and prune_positions else None, work=work)
    if progress and not runs:
        progress(T * L, T * L, kind)
    p = p.double().numpy()
    scores = np.where(plan.where >= 0, p[np.maximum(plan.where, 0)] if len(runs) else 0.0, plan.fill)
    return TraceResult(
        prompt=prep.prompt, subject=prep.subject, kind=kind, scores=scores,
        clean_prob=prep.clean_prob, corrupted_prob=prep.corrupted_prob, tokens=list(prep.tokens),
        subject_span=(prep.span.start, prep.span.end), answer=prep.answer,
        answer_id=prep.answer_id, settings=prep.settings_dict(),
        skipped_cells=plan.skipped, shared_cells=plan.shared,
        forwards=work.get("forwards", 0), block_evals=work.get("block_evals", 0),
    )


def trace(handle, prompt: str, subject: str, *, answer: str | None = None, kind: str = "hidden",
          settings: TraceSettings | None = None, batched: bool = True, progress=None) -> TraceResult:
    """Causal trace of one prompt for one kind ("hidden", "mlp" or "attn")."""
    check_kind(kind)
    prep = prepare_trace(handle, prompt, subject, answer, settings)
    return run_grid(prep, kind, batched=batched, progress=progress)


def trace_kinds(handle, prompt: str, subject: str, *, answer: str | None = None,
                kinds=KINDS, settings: TraceSettings | None = None,
                progress=None) -> dict[str, TraceResult]:
    """Traces of several kinds sharing one clean run and one corrupted baseline."""
    kinds = [check_kind(k) for k in kinds]
    prep = prepare_trace(handle, prompt, subject, answer, settings)
    return {k: run_grid(prep, k, progress=progress) for k in kinds}


def patched_prob(prep: PreparedTrace, restore: list[tuple[str, int, int]]) -> float:
    """P(answer), mean over the noise samples, with the given (kind, token, layer) states all
    restored in one corrupted run (no windows: exactly the listed states). [] → corrupted."""
    S, dev = prep.settings.samples, prep.input_ids.device
    rows = torch.arange(S, device=dev)
    patches = []
    for kind, t, layer in restore:
        check_kind(kind)
        if not (0 <= t < prep.n_tokens and 0 <= layer < prep.handle.n_layers):
            raise BadInputError(f"state ({t}, {layer}) is outside the prompt/model", field="restore")
        toks = torch.full((S,), t, dtype=torch.long, device=dev)
        patches.append(Patch(layer, kind, rows, toks, prep.clean_states[kind][layer, toks]))
    with prep.handle.lock, torch.no_grad():
        p, _ = corrupted_forward(prep.handle, prep.input_ids, (prep.span.start, prep.span.end),
                                 prep.noise, S, patches, prep.answer_id)
    return float(p.mean())
