"""How well the demo model knows its world: top-1 recall, and a plain-hook causal trace check.

Recall: a fact counts as recalled under a template when greedy decoding of the filled prompt
gives exactly the object's tokens (all of them, teacher forced: the argmax at each object
position equals the next object token). `train_top1` uses the training templates, `heldout_top1`
the held-out paraphrase templates the model never saw.

`subject_token_effects` is a small, independent causal trace (Meng et al., 2022, §2.1) in plain
PyTorch hooks, used to check a freshly trained model before shipping it: corrupt the subject
embeddings with Gaussian noise (3 × the std of subject embeddings), then restore the clean MLP
outputs of a window of layers at one subject token and measure how much of the answer
probability comes back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd
import torch

from core.world import fill


@dataclass
class Recall:
    train_top1: float
    heldout_top1: float
    n_facts: int
    by_relation: pd.DataFrame    # relation, train_top1, heldout_top1, n_facts

    def as_dict(self) -> dict:
        return {"train_top1": self.train_top1, "heldout_top1": self.heldout_top1, "n_facts": self.n_facts}


@torch.no_grad()
def recalled(model, tokenizer, prompts: list[str], objects: list[str], batch_size: int = 64) -> list[bool]:
    """Whether greedy decoding of each prompt starts with " " + object (all object tokens)."""
    hits = []
    dev = next(model.parameters()).device
    for i in range(0, len(prompts), batch_size):
        p_ids = [tokenizer(p)["input_ids"] for p in prompts[i:i + batch_size]]
        o_ids = [tokenizer(" " + o)["input_ids"] for o in objects[i:i + batch_size]]
        seqs = [p + o for p, o in zip(p_ids, o_ids)]
        T = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), T), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)
        for b, s in enumerate(seqs):                       # right padding: positions stay 0..n-1
            ids[b, :len(s)] = torch.tensor(s)
            mask[b, :len(s)] = 1
        pred = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.argmax(-1).cpu()
        for b, (p, o) in enumerate(zip(p_ids, o_ids)):
            pos = torch.arange(len(p) - 1, len(p) + len(o) - 1)
            hits.append(bool((pred[b, pos] == torch.tensor(o)).all()))
    return hits


def measure_recall(model, tokenizer, facts: pd.DataFrame, relations: list[dict],
                   max_facts: int | None = None, seed: int = 0) -> Recall:
    """Top-1 recall over every (fact, template) pair; `max_facts` samples facts (fixed seed)."""
    rels = {r["name"]: r for r in relations}
    rows = list(facts.itertuples(index=False))
    if max_facts is not None and max_facts < len(rows):
        rows = random.Random(seed).sample(rows, max_facts)
    records = []
    for kind, key in (("train", "templates"), ("heldout", "paraphrase_templates")):
        prompts, objects, names = [], [], []
        for s, r, o in rows:
            for t in rels[r][key]:
                prompts.append(fill(t, s))
                objects.append(o)
                names.append(r)
        for r, h in zip(names, recalled(model, tokenizer, prompts, objects)):
            records.append({"relation": r, "kind": kind, "hit": h})
    df = pd.DataFrame(records)
    by = df.pivot_table(index="relation", columns="kind", values="hit", aggfunc="mean").reset_index()
    by = by.rename(columns={"train": "train_top1", "heldout": "heldout_top1"})
    by["n_facts"] = by["relation"].map(pd.Series([r for _, r, _ in rows]).value_counts())
    mean = df.groupby("kind")["hit"].mean()
    return Recall(train_top1=float(mean["train"]), heldout_top1=float(mean["heldout"]),
                  n_facts=len(rows), by_relation=by[["relation", "train_top1", "heldout_top1", "n_facts"]])


# ---- plain-hook causal trace check --------------------------------------------------------------

@dataclass
class TokenEffects:
    """Average indirect effect of restoring MLP outputs, per layer (window centre)."""

    first: list[float]       # first subject token
    middle: list[float]      # middle subject tokens (mean)
    last: list[float]        # last subject token
    after: list[float]       # last prompt token
    p_clean: float           # mean answer probability, clean run
    p_corrupt: float         # mean answer probability, subject corrupted
    n: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@torch.no_grad()
def subject_token_effects(model, tokenizer, knowns: list[dict], window: int = 3,
                          noise_mult: float = 3.0, n_samples: int = 4, seed: int = 0) -> TokenEffects:
    """Restore clean MLP outputs of layers [l - window//2, l + window//2] at one token of the
    corrupted run; indirect effect = p(restored) − p(corrupt) for the answer's first token,
    averaged over facts. Noise: N(0, (noise_mult · std of subject-token embeddings)²)."""
    from core.subject import locate_subject

    blocks = model.transformer.h
    L = len(blocks)
    wte = model.transformer.wte
    gen = torch.Generator().manual_seed(seed)
    sub_ids = torch.cat([torch.tensor(tokenizer(k["subject"])["input_ids"]) for k in knowns])
    std = wte.weight[sub_ids].std().item()
    sums = {k: torch.zeros(L) for k in ("first", "middle", "last", "after")}
    p_clean_sum = p_corrupt_sum = 0.0
    for k in knowns:
        ids = torch.tensor([tokenizer(k["prompt"])["input_ids"]])
        span = locate_subject(tokenizer, k["prompt"], k["subject"])
        answer = tokenizer(" " + k["attribute"])["input_ids"][0]
        T = ids.shape[1]
        clean_mlp = {}
        hooks = [blk.mlp.register_forward_hook(lambda m, i, o, l=l: clean_mlp.__setitem__(l, o.clone()))
                 for l, blk in enumerate(blocks)]
        p_clean = model(ids).logits[0, -1].softmax(-1)[answer].item()
        for h in hooks:
            h.remove()
        noise = torch.randn(n_samples, len(span.indices), wte.weight.shape[1], generator=gen) * noise_mult * std
        base = ids.repeat(n_samples, 1)

        def corrupt(m, i, o):
            o = o.clone()
            o[:, span.start:span.end] += noise
            return o

        def run(restore_tok=None, layers=()):
            hs = [wte.register_forward_hook(corrupt)]
            for l in layers:
                def put(m, i, o, l=l):
                    o = o.clone()
                    o[:, restore_tok] = clean_mlp[l][0, restore_tok]
                    return o
                hs.append(blocks[l].mlp.register_forward_hook(put))
            p = model(base).logits[:, -1].softmax(-1)[:, answer].mean().item()
            for h in hs:
                h.remove()
            return p

        p_corrupt = run()
        p_clean_sum += p_clean
        p_corrupt_sum += p_corrupt
        toks = {"first": [span.start], "last": [span.last], "after": [T - 1],
                "middle": span.indices[1:-1] or [span.start]}
        for l in range(L):
            layers = range(max(0, l - window // 2), min(L, l + window // 2 + 1))
            for name, ts in toks.items():
                sums[name][l] += sum(run(t, layers) - p_corrupt for t in ts) / len(ts)
    n = len(knowns)
    return TokenEffects(**{k: (v / n).tolist() for k, v in sums.items()},
                        p_clean=p_clean_sum / n, p_corrupt=p_corrupt_sum / n, n=n)
