"""Causal traces averaged over many facts (MEMIT paper Figure 8 and Figure 3; ROME Section 2.1).

Facts come in the format of Meng et al.'s `known_1000.json` (prompt, subject, attribute; the demo
world writes the same format to `assets/world/knowns.json`). Facts the model gets wrong (clean
top-1 token ≠ the attribute's first token) are skipped. For each fact the indirect effect
IE = P(answer | restored) − P(answer | corrupted) is averaged per token category × layer:

    first_subject     the first subject token            middle_subject  the ones between
    last_subject      the last subject token             first_subsequent the token after it
    further           tokens after that, before the last last             the prompt's last token

as in the reference implementation (a one-token subject counts as first and last; a token right
after the subject that is also the prompt's last counts as first subsequent and last; middle and
further tokens are averaged per token instance). The severed-path curves at the last subject
token are averaged too; their gap picks the suggested edit range (`core.layer_select`).
The noise σ is the std of the subject-token embeddings over all facts used (the reference's
`collect_embedding_std`), so every fact gets the same noise level.
Exact duplicates (same prompt, subject and attribute; ROME's known_1000.json lists one fact
twice under two known_ids) are dropped first, keeping the first: each fact counts once, and
`n` counts distinct facts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from core.errors import BadInputError, WorkbenchError
from core.layer_select import LayerSuggestion, suggest_layers
from core.subject import locate_subject
from core.tracing import (KINDS, TraceSettings, answer_token, check_kind, prepare_trace, resolve_settings,
                          run_grid)
from core.tracing_severed import run_severed

CATEGORIES = ("first_subject", "middle_subject", "last_subject", "first_subsequent", "further", "last")


@dataclass(frozen=True)
class Fact:
    prompt: str
    subject: str
    answer: str
    known_id: int | None = None


def load_facts(path) -> list[Fact]:
    """Read a knowns file: a JSON list of {"prompt" (or "template"), "subject", "attribute"}."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"no such file: {p}", field="facts")
    try:
        rows = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"{p} is not JSON: {e}", field="facts") from None
    if not isinstance(rows, list):
        raise BadInputError(f"{p} must hold a JSON list of facts", field="facts")
    facts = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise BadInputError(f"entry {i} is not an object", field="facts")
        prompt = r.get("prompt") or (r["template"].format(r.get("subject", "")) if isinstance(r.get("template"), str) else None)
        subject, answer = r.get("subject"), r.get("attribute", r.get("answer"))
        if not all(isinstance(x, str) and x.strip() for x in (prompt, subject, answer)):
            raise BadInputError(f"entry {i} needs non-empty 'prompt', 'subject' and 'attribute'", field="facts")
        facts.append(Fact(prompt, subject, answer, r.get("known_id")))
    if not facts:
        raise BadInputError(f"{p} holds no facts", field="facts")
    return facts


def drop_duplicates(facts: list[Fact]) -> tuple[list[Fact], int]:
    """The facts with exact repeats of (prompt, subject, answer) removed, first kept, order
    unchanged (the known_id is not part of the key), and how many were removed."""
    seen, out = set(), []
    for f in facts:
        key = (f.prompt, f.subject, f.answer)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out, len(facts) - len(out)


def token_categories(span: tuple[int, int], n_tokens: int) -> dict[str, list[int]]:
    """Token indices of each category for one prompt (see module docstring)."""
    s0, s1 = span
    last = n_tokens - 1
    cats = {"first_subject": [s0], "middle_subject": list(range(s0 + 1, s1 - 1)),
            "last_subject": [s1 - 1], "first_subsequent": [], "further": [], "last": [last]}
    if s1 <= last:
        cats["first_subsequent"] = [s1]
        cats["further"] = list(range(s1 + 1, last))
    return cats


@dataclass
class AveragedSevered:
    """Mean indirect effects at the last subject token, per layer, by severing mode."""

    normal: np.ndarray
    mlp_severed: np.ndarray
    attn_severed: np.ndarray

    @property
    def gap(self) -> np.ndarray:
        return self.normal - self.mlp_severed


@dataclass
class AveragedTrace:
    """Average indirect effects over `n_facts` facts the model knows."""

    n_facts: int
    n_layers: int
    n_skipped_wrong: int                  # facts whose clean top-1 is not the attribute
    n_skipped_invalid: int                # facts that cannot be traced (subject missing, …)
    effects: dict[str, dict[str, np.ndarray]]   # kind -> category -> (layers,)
    counts: dict[str, int]                # token instances per category
    clean_prob: float                     # means over the facts used
    corrupted_prob: float
    sigma: float
    settings: dict
    severed: AveragedSevered | None = None
    suggestion: LayerSuggestion | None = None
    known_ids: list = field(default_factory=list)
    n_duplicates: int = 0                 # exact repeats of a fact dropped before anything else

    def to_dict(self) -> dict:
        d = {
            "n_facts": self.n_facts, "n_layers": self.n_layers,
            "suggested_layers": self.suggestion.layers if self.suggestion else [],
            "effects": {k: {c: v.tolist() for c, v in cats.items()} for k, cats in self.effects.items()},
            "counts": dict(self.counts),
            "n_skipped_wrong": self.n_skipped_wrong, "n_skipped_invalid": self.n_skipped_invalid,
            "n_duplicates": self.n_duplicates,
            "clean_prob": self.clean_prob, "corrupted_prob": self.corrupted_prob,
            "sigma": self.sigma, "settings": dict(self.settings), "known_ids": list(self.known_ids),
        }
        if self.severed is not None:
            d["severed"] = {"normal": self.severed.normal.tolist(),
                            "mlp_severed": self.severed.mlp_severed.tolist(),
                            "attn_severed": self.severed.attn_severed.tolist(),
                            "gap": self.severed.gap.tolist()}
        if self.suggestion is not None:
            d["suggestion"] = self.suggestion.to_dict()
        return d


def known_mask(handle, facts: list[Fact], batch_size: int = 64) -> list[bool | None]:
    """For each fact: True if the model's clean top-1 next token is the answer's first token,
    False if not, None if the fact cannot be traced (bad subject/answer, too long)."""
    out: list[bool | None] = [None] * len(facts)
    todo = []
    for i, f in enumerate(facts):
        try:
            locate_subject(handle.tokenizer, f.prompt, f.subject)
            ids = handle.tokenizer(f.prompt)["input_ids"]
            if len(ids) > handle.max_length:
                continue
            todo.append((i, answer_token(handle, f.prompt, f.answer)))
        except BadInputError:
            continue
    for b in range(0, len(todo), batch_size):
        chunk = todo[b:b + batch_size]
        enc = handle.tokenize([facts[i].prompt for i, _ in chunk])        # left-padded
        with handle.lock, torch.no_grad():
            with handle.model.trace(enc, logits_to_keep=1):
                top = handle.lm_head.output[:, -1].argmax(dim=-1).save()
        for (i, ans), t in zip(chunk, top.tolist()):
            out[i] = int(t) == ans
    return out


def subject_embedding_std(handle, facts: list[Fact]) -> float:
    """σ: std of all subject-token embedding entries over the facts (reference convention)."""
    E = handle.hf.get_input_embeddings().weight
    rows = []
    for f in facts:
        ids = handle.tokenizer(f.prompt, return_tensors="pt")["input_ids"][0]
        sp = locate_subject(handle.tokenizer, f.prompt, f.subject)
        rows.append(E[ids[sp.start:sp.end].to(E.device)].float())
    return float(torch.cat(rows).std())


def average_traces(handle, facts: list[Fact], *, n: int | None = None, kinds=KINDS,
                   settings: TraceSettings | None = None, severed: bool = True,
                   layer_range_size: int | None = None, progress=None) -> AveragedTrace:
    """Average indirect effects over (up to) `n` distinct facts the model knows.

    Exact duplicates in `facts` are dropped first (`drop_duplicates`); the skip counts are of
    the distinct facts. progress(done, total, phase) is called after the filter ("checking facts") and after each
    traced fact ("tracing").
    """
    kinds = [check_kind(k) for k in kinds]
    settings = resolve_settings(settings, handle.n_layers)
    if n is not None and (int(n) != n or n < 1):
        raise BadInputError(f"must be an integer ≥ 1, got {n}", field="n")
    if not facts:
        raise BadInputError("no facts given", field="facts")
    facts, n_duplicates = drop_duplicates(facts)
    mask = known_mask(handle, facts)
    if progress:
        progress(len(facts), len(facts), "checking facts")
    used = [f for f, ok in zip(facts, mask) if ok]
    if n is not None:
        used = used[:n]
    if not used:
        raise WorkbenchError(f"the model gets none of the {len(facts)} facts right "
                             "(clean top-1 ≠ attribute); nothing to average")
    sigma = settings.sigma if settings.sigma is not None else subject_embedding_std(handle, used)
    fixed = replace(settings, sigma=sigma)
    L = handle.n_layers
    sums = {k: {c: np.zeros(L) for c in CATEGORIES} for k in kinds}
    counts = {c: 0 for c in CATEGORIES}
    sev = {m: np.zeros(L) for m in ("normal", "mlp_severed", "attn_severed")}
    clean = corrupted = 0.0
    for i, f in enumerate(used):
        prep = prepare_trace(handle, f.prompt, f.subject, f.answer, fixed)
        cats = token_categories((prep.span.start, prep.span.end), prep.n_tokens)
        for k in kinds:
            ie = run_grid(prep, k).effects                                     # (T, L)
            for c, toks in cats.items():
                if toks:
                    sums[k][c] += ie[toks].sum(axis=0)
        for c, toks in cats.items():
            counts[c] += len(toks)
        if severed:
            s = run_severed(prep)
            for m in sev:
                sev[m] += getattr(s, m) - prep.corrupted_prob
        clean += prep.clean_prob
        corrupted += prep.corrupted_prob
        if progress:
            progress(i + 1, len(used), "tracing")
    m = len(used)
    effects = {k: {c: (sums[k][c] / counts[c] if counts[c] else np.full(L, np.nan))
                   for c in CATEGORIES} for k in kinds}
    avg_sev = AveragedSevered(*(sev[k] / m for k in ("normal", "mlp_severed", "attn_severed"))) if severed else None
    if avg_sev is not None:
        suggestion = suggest_layers(avg_sev.gap, size=layer_range_size, total_effect=(clean - corrupted) / m,
                                    source=f"MLP-severed gap at the last subject token, mean over {m} facts")
    elif "mlp" in effects:
        suggestion = suggest_layers(effects["mlp"]["last_subject"], size=layer_range_size,
                                    total_effect=(clean - corrupted) / m, source=f"MLP indirect effect at the last subject token, mean over {m} facts")
    else:
        suggestion = None
    return AveragedTrace(
        n_facts=m, n_layers=L, n_skipped_wrong=sum(1 for x in mask if x is False),
        n_skipped_invalid=sum(1 for x in mask if x is None), effects=effects, counts=counts,
        clean_prob=clean / m, corrupted_prob=corrupted / m, sigma=sigma,
        settings={**fixed.__dict__, "noise_level": fixed.noise * sigma},
        severed=avg_sev, suggestion=suggestion, known_ids=[f.known_id for f in used],
        n_duplicates=n_duplicates,
    )
