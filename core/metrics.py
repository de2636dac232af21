"""Edit quality metrics (Meng et al., 2023, Appendix C), computed in batched forwards.

CounterFact (Eq. 24-26), from the per-token mean NLL of " " + object after a prompt:
    ES  efficacy:      P[o_new] > P[o_true] on the edit prompt itself
    PS  paraphrase:    the same on paraphrases of it (fraction per edit)
    NS  neighbourhood: P[o_new] < P[o_true] on prompts about other subjects with the true object
    S   the harmonic mean of ES, PS, NS
and their magnitudes EM/PM/NM: P[new] − P[true] (NM: P[true] − P[new]), P = exp(−mean NLL).
zsRE (Eq. 21-23): top-1 accuracy of each target token, teacher forced (efficacy, paraphrase,
specificity against the neighbourhood answer). Per-edit values are DataFrames;
`summarize`/`summarize_zsre` give means in percent, as the paper reports them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from core.requests import EditRequest, same_object
from core.targets import encode, final_norm, head, pad_left


@torch.no_grad()
def target_scores(handle, items: list[tuple[str, str]], batch_size: int = 64,
                  progress=None) -> tuple[np.ndarray, np.ndarray]:
    """For each (prompt, target): mean NLL of " " + target's tokens and their top-1 accuracy.

    Rows are sorted by length and batched; one traced forward per batch.
    """
    encs = [encode(handle.tokenizer, p, None, None, t) for p, t in items]
    order = sorted(range(len(encs)), key=lambda i: len(encs[i]["ids"]))
    nll, acc = np.zeros(len(encs)), np.zeros(len(encs))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask, pads = pad_left([encs[i]["ids"] for i in idx], handle.tokenizer.pad_token_id, handle.device)
        rows, pos, tok, owner = [], [], [], []
        for r, (i, p) in enumerate(zip(idx, pads)):
            e = encs[i]
            rows += [r] * len(e["tgt_ids"]); pos += [q + p for q in e["tgt_pos"]]
            tok += e["tgt_ids"]; owner += [r] * len(e["tgt_ids"])
        rows_t = torch.tensor(rows, device=handle.device)
        pos_t = torch.tensor(pos, device=handle.device)
        tok_t = torch.tensor(tok, device=handle.device)
        with handle.lock, handle.model.trace({"input_ids": ids, "attention_mask": mask}) as tracer:
            normed = final_norm(handle).output[rows_t, pos_t].save()          # (N_tok, d)
            tracer.stop()
        logits = head(handle)(normed).float()                                  # (N_tok, V)
        lp = logits.log_softmax(-1).gather(1, tok_t.unsqueeze(1)).squeeze(1)
        hit = logits.argmax(-1) == tok_t
        owner_t = torch.tensor(owner)
        count = torch.bincount(owner_t, minlength=len(idx)).double()
        s_lp = torch.zeros(len(idx), dtype=torch.float64).index_add(0, owner_t, lp.double().cpu())
        s_hit = torch.zeros(len(idx), dtype=torch.float64).index_add(0, owner_t, hit.double().cpu())
        nll[idx] = (-s_lp / count).numpy()
        acc[idx] = (s_hit / count).numpy()
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order), "metrics")
    return nll, acc


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def subject_finder(subjects) -> Callable[[str], set[str]]:
    """A function prompt -> the set of these subjects the prompt names.

    A subject counts only as a whole name: not inside a longer word ("Orla" is not named by
    "Orlando") and not inside a longer subject the prompt names ("Rose" is not named by "Wanda Rose
    Bramsey" when that is a subject too: the scan takes the longest name at each position).
    """
    names = sorted(set(subjects), key=len, reverse=True)
    if not names:
        return lambda prompt: set()
    rx = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(n) for n in names) + r")(?!\w)")
    return lambda prompt: {m.group(0) for m in rx.finditer(prompt)}


def edited_neighbours(requests: list[EditRequest]) -> list[set[int]]:
    """For each request, the indices of its neighbourhood prompts that are about a subject the same
    batch edits under the same relation: that subject's true object is changed on purpose, so
    Eq. 26 (the true object should still win there) does not apply to them."""
    by_relation: dict[str, set[str]] = {}
    for r in requests:
        by_relation.setdefault(r.relation_key, set()).add(r.subject)
    named = subject_finder(r.subject for r in requests)
    out = []
    for r in requests:
        others = by_relation[r.relation_key] - {r.subject}
        out.append({j for j, p in enumerate(r.neighborhood_prompts) if named(p) & others})
    return out


def outside_neighbours(requests: list[EditRequest]) -> list[set[int]]:
    """For each request, the indices of its neighbourhood prompts that name no subject the batch
    edits at all (under any relation). In a large batch over a small world many neighbours are
    themselves edited under another relation; NS over the prompts outside the batch isolates the
    leak of the edits onto subjects nobody edited (the paper's reading of Eq. 26)."""
    named = subject_finder(r.subject for r in requests)
    return [{j for j, p in enumerate(r.neighborhood_prompts) if not named(p)} for r in requests]


def counterfact_scores(handle, requests: list[EditRequest], batch_size: int = 64, progress=None, *,
                       exclude_edited_neighbours: bool = False) -> pd.DataFrame:
    """Per edit: ES, PS, NS (0-1), EM, PM, NM (probability differences), NLLs and top-1 of o_new.

    Requests without target_true, or whose target_true is target_new (an edit that changes no
    fact), get NaN for the CounterFact columns (new_top1 is always there).
    exclude_edited_neighbours: leave out neighbourhood prompts about subjects the batch edits under
    the same relation (`edited_neighbours`); column n_neighbours_excluded counts them.
    NS_outside: NS over the neighbourhood prompts about subjects the batch does not edit at all
    (`outside_neighbours`; NaN when there are none), n_neighbours_outside their number.
    """
    skip = edited_neighbours(requests) if exclude_edited_neighbours else [set() for _ in requests]
    outside = outside_neighbours(requests)
    # the object each edit is compared with: none without a true object, or when it is the new one
    true = [None if same_object(r) else r.target_true or None for r in requests]
    items, where = [], []              # where: (edit, kind, index in kind, which object)
    for i, r in enumerate(requests):
        neigh = [p for j, p in enumerate(r.neighborhood_prompts) if j not in skip[i]]
        groups = [("E", [r.filled]), ("P", list(r.paraphrase_prompts)), ("N", neigh)]
        for kind, prompts in groups:
            for j, p in enumerate(prompts):
                items.append((p, r.target_new)), where.append((i, kind, j, "new"))
                if true[i]:
                    items.append((p, true[i])), where.append((i, kind, j, "true"))
    nll, acc = target_scores(handle, items, batch_size, progress)
    table: dict[tuple, float] = {}
    top1: dict[int, float] = {}
    for (i, kind, j, which), x, a in zip(where, nll, acc):
        table[(i, kind, j, which)] = x
        if kind == "E" and which == "new":
            top1[i] = a
    rows = []
    for i, r in enumerate(requests):
        kept = [j for j in range(len(r.neighborhood_prompts)) if j not in skip[i]]
        out_k = [k for k, j in enumerate(kept) if j in outside[i]]       # positions among the kept
        row = {"case_id": r.case_id, "subject": r.subject, "target_new": r.target_new,
               "target_true": r.target_true, "new_top1": top1[i], "n_neighbours_excluded": len(skip[i]),
               "n_neighbours_outside": len(out_k) if true[i] else 0}
        if true[i]:
            def pairs(kind, n):
                return [(table[(i, kind, j, "new")], table[(i, kind, j, "true")]) for j in range(n)]
            e = pairs("E", 1)[0]
            para = pairs("P", len(r.paraphrase_prompts))
            neigh = pairs("N", len(r.neighborhood_prompts) - len(skip[i]))
            p = lambda x: math.exp(-x)  # noqa: E731
            row.update(
                nll_new=e[0], nll_true=e[1], ES=float(e[0] < e[1]),
                PS=_mean([float(a < b) for a, b in para]), NS=_mean([float(a > b) for a, b in neigh]),
                EM=p(e[0]) - p(e[1]), PM=_mean([p(a) - p(b) for a, b in para]),
                NM=_mean([p(b) - p(a) for a, b in neigh]),
                NS_outside=_mean([float(neigh[k][0] > neigh[k][1]) for k in out_k]))
        else:
            row.update({k: math.nan for k in ("nll_new", "nll_true", "ES", "PS", "NS", "EM", "PM", "NM",
                                              "NS_outside")})
        rows.append(row)
    return pd.DataFrame(rows)


def harmonic_mean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan
    if min(vals) <= 0:
        return 0.0
    return len(vals) / sum(1.0 / v for v in vals)


def summarize(df: pd.DataFrame) -> dict:
    """Means over edits in percent: ES, PS, NS, S (harmonic mean), EM, PM, NM, new_top1, NS_outside
    (over the edits that have such prompts); n, neighbours_excluded, neighbours_outside."""
    out = {"n": int(len(df))}
    for k in ("ES", "PS", "NS", "EM", "PM", "NM", "new_top1", "NS_outside"):
        col = df[k].astype(float) if k in df else pd.Series(dtype=float)
        out[k] = float(col.mean()) * 100 if col.notna().any() else math.nan
    out["S"] = harmonic_mean([out["ES"], out["PS"], out["NS"]])
    if "n_neighbours_excluded" in df:
        out["neighbours_excluded"] = int(df["n_neighbours_excluded"].sum())
    if "n_neighbours_outside" in df:
        out["neighbours_outside"] = int(df["n_neighbours_outside"].sum())
    return out


def zsre_scores(handle, requests: list[EditRequest], batch_size: int = 64, progress=None) -> pd.DataFrame:
    """Per edit: efficacy, paraphrase, specificity as mean top-1 token accuracies (Eq. 21-23)."""
    items, where = [], []
    for i, r in enumerate(requests):
        items.append((r.filled, r.target_new)), where.append((i, "efficacy"))
        for p in r.paraphrase_prompts:
            items.append((p, r.target_new)), where.append((i, "paraphrase"))
        answer = r.neighborhood_target or r.target_true
        if answer:
            for p in r.neighborhood_prompts:
                items.append((p, answer)), where.append((i, "specificity"))
    _, acc = target_scores(handle, items, batch_size, progress)
    per: dict[tuple, list[float]] = {}
    for (i, kind), a in zip(where, acc):
        per.setdefault((i, kind), []).append(float(a))
    return pd.DataFrame([{"case_id": r.case_id, "subject": r.subject, "target_new": r.target_new,
                          **{k: _mean(per.get((i, k), [])) for k in ("efficacy", "paraphrase", "specificity")}}
                         for i, r in enumerate(requests)])


def summarize_zsre(df: pd.DataFrame) -> dict:
    out = {"n": int(len(df))}
    for k in ("efficacy", "paraphrase", "specificity"):
        out[k] = float(df[k].mean()) * 100 if df[k].notna().any() else math.nan
    out["score"] = harmonic_mean([out["efficacy"], out["paraphrase"], out["specificity"]])
    return out
