"""Generation metrics (paper Appendix C.2): fluency and consistency of free text after an edit.

- Generation entropy (GE, Eq. 27): n-gram entropy of a generated text, bi- and tri-grams with
  weights 2/3 and 4/3. As in the reference implementation (`compute_n_gram_entropy`) the two
  weighted entropies are *averaged*, GE = (2/3·H₂ + 4/3·H₃)/2 in bits, then averaged over texts;
  the paper's tables print 100·GE. Repetitive text ("tennis tennis tennis") scores low.
- Reference score (RS): TF-IDF cosine between the text generated about subject s and reference
  text about the new object o (reference: " ".join of texts, one vectoriser fitted on the
  reference corpus). For the demo world the reference texts are its corpus sentences about
  *other* subjects that have object o (`ReferenceCorpus`).
- Before/after generations for edited subjects and their neighbours, greedy and seeded sampling.

Words are split with a regex close to nltk's word_tokenize (nltk is not a dependency).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.errors import BadInputError
from core.ledger_io import live_weights, set_weights

_WORD = re.compile(r"\w+(?:'\w+)?|[^\w\s]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def ngram_entropy(text: str, ns=(2, 3), weights=(2 / 3, 4 / 3)) -> float:
    """Eq. 27 as the reference computes it: mean over n of w_n · H_n, H_n = −Σ f_n log₂ f_n."""
    toks = words(text)
    parts = []
    for n, w in zip(ns, weights):
        grams = Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))
        total = sum(grams.values())
        h = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        parts.append(w * h)
    return float(np.mean(parts))


def generation_entropy(texts) -> float:
    """GE of a set of generations: the mean n-gram entropy."""
    texts = list(texts)
    return float(np.mean([ngram_entropy(t) for t in texts])) if texts else float("nan")


class ReferenceScorer:
    """TF-IDF cosine similarity with one vectoriser fitted on a reference corpus."""

    def __init__(self, corpus_texts):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer().fit(list(corpus_texts))

    def score(self, text: str, reference: str) -> float:
        a, b = self.vectorizer.transform([text, reference]).toarray()
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


class ReferenceCorpus:
    """Reference texts about an object: corpus sentences about other subjects that have it.

    documents: texts (the demo corpus split at blank lines); facts: DataFrame(subject, relation,
    object) or None — without facts, any sentence naming o outside documents about s counts.
    """

    def __init__(self, documents, facts: pd.DataFrame | None = None, max_sentences: int = 200):
        self.documents = [d for d in documents if d.strip()]
        self.facts = facts
        self.max_sentences = max_sentences
        self.scorer = ReferenceScorer(self.documents)

    @classmethod
    def from_world(cls, world_dir: str | Path | None = None, max_sentences: int = 200) -> ReferenceCorpus:
        from core import world_io as world

        folder = Path(world_dir) if world_dir is not None else world.world_dir()
        if not (folder / "corpus.txt").is_file():
            raise BadInputError(f"no world corpus at {folder}; build it with `workbench demo build-world`",
                                field="world")
        docs = re.split(r"\n\s*\n", (folder / "corpus.txt").read_text())
        return cls(docs, world.load_facts(folder), max_sentences)

    def texts_about(self, obj: str, exclude_subject: str) -> list[str]:
        pattern = re.compile(rf"(?<!\w){re.escape(obj)}(?!\w)")
        holders = None
        if self.facts is not None:
            holders = set(self.facts.loc[self.facts["object"] == obj, "subject"]) - {exclude_subject}
        out = []
        for doc in self.documents:
            if exclude_subject in doc or not pattern.search(doc):
                continue
            if holders is not None and not any(h in doc for h in holders):
                continue
            out.extend(s for s in _SENTENCE.split(doc) if pattern.search(s))
            if len(out) >= self.max_sentences:
                break
        return out[:self.max_sentences]

    def score(self, generated: list[str], obj: str, subject: str) -> float:
        """RS: cosine(TF-IDF(" ".join(generated)), TF-IDF(" ".join(reference texts about obj)))."""
        refs = self.texts_about(obj, subject)
        return self.scorer.score(" ".join(generated), " ".join(refs)) if refs else float("nan")


@torch.no_grad()
def generate_texts(handle, prompts, *, max_new_tokens: int = 40, sample: bool = False, seed: int = 0,
                   top_k: int = 5, batch_size: int = 16, with_prompt: bool = True) -> list[str]:
    """Greedy or seeded top-k sampled continuations (the reference samples with top_k=5).

    Holds the handle lock; sampling uses a forked RNG, so the global torch seed is untouched.
    """
    prompts = list(prompts)
    out = []
    tok = handle.tokenizer
    with handle.lock, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            enc = handle.tokenize(chunk)
            ids = handle.hf.generate(**enc, max_new_tokens=max_new_tokens, do_sample=sample,
                                     top_k=top_k if sample else None, pad_token_id=tok.pad_token_id)
            new = tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            out.extend(p + t if with_prompt else t for p, t in zip(chunk, new))
    return out


def generation_prompts(request) -> list[str]:
    """The prompts to generate from about an edited subject (the relation prompt when none given)."""
    return list(request.generation_prompts) or [request.filled]


def generation_metrics(handle, requests, *, references: ReferenceCorpus | None = None,
                       max_new_tokens: int = 40, seed: int = 0, progress=None) -> pd.DataFrame:
    """Per request: GE of sampled text about the subject and RS against texts about target_new."""
    rows = []
    for i, r in enumerate(requests):
        texts = generate_texts(handle, generation_prompts(r), max_new_tokens=max_new_tokens,
                               sample=True, seed=seed)
        rows.append({"subject": r.subject, "target_new": r.target_new, "GE": generation_entropy(texts),
                     "RS": references.score(texts, r.target_new, r.subject) if references else float("nan"),
                     "text": texts[0]})
        if progress:
            progress(i + 1, len(requests), "generation")
    return pd.DataFrame(rows, columns=["subject", "target_new", "GE", "RS", "text"])


def summarize_generation(df: pd.DataFrame) -> dict:
    """{'GE': mean bits, 'RS': mean cosine · 100} (NaN-skipping)."""
    return {"GE": float(df["GE"].mean()) if len(df) else float("nan"),
            "RS": float(df["RS"].mean() * 100) if len(df) and df["RS"].notna().any() else float("nan")}


def before_after_generations(handle, edit, *, n_neighbours: int = 2, modes=("greedy", "sampled"),
                             max_new_tokens: int = 30, seed: int = 0) -> pd.DataFrame:
    """Generations before and after an edit, for its subjects and their neighbours.

    `edit` is an EditResult not yet applied (applied for the 'after' texts, then reverted
    bit-exactly) or an AppliedEdit already in the model (its originals are swapped in for the
    'before' texts, then the edited weights are put back). The model ends as it started.
    """
    from core.editing import apply_edit, revert

    result = edit.result if hasattr(edit, "originals") else edit
    items = []
    for r in result.requests:
        items += [("subject", r.subject, p) for p in generation_prompts(r)[:1]]
        items += [("neighbour", r.subject, p) for p in r.neighborhood_prompts[:n_neighbours]]
    prompts = [p for _, _, p in items]

    def run_all():
        return {m: generate_texts(handle, prompts, max_new_tokens=max_new_tokens, sample=m == "sampled",
                                  seed=seed, with_prompt=False) for m in modes}

    with handle.lock:
        if hasattr(edit, "originals"):
            edited = live_weights(handle, edit.originals)
            set_weights(handle, edit.originals)
            try:
                before = run_all()
            finally:
                set_weights(handle, edited)
            after = run_all()
        else:
            before = run_all()
            applied = apply_edit(handle, result)
            try:
                after = run_all()
            finally:
                revert(handle, applied)
    rows = [{"kind": k, "edited_subject": s, "prompt": p, "mode": m, "before": before[m][i], "after": after[m][i]}
            for m in modes for i, (k, s, p) in enumerate(items)]
    return pd.DataFrame(rows, columns=["kind", "edited_subject", "prompt", "mode", "before", "after"])
