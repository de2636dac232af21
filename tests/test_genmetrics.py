"""Generation metrics: n-gram entropy against hand-computed values, TF-IDF cosine against a
hand-built TF-IDF, reference texts from a world corpus, greedy/seeded generation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from core.genmetrics import (
    ReferenceCorpus, ReferenceScorer, generate_texts, generation_entropy, ngram_entropy, words,
)


def test_ngram_entropy_hand_computed():
    # "a b a b": bigrams (a,b)×2 (b,a)×1 → H₂ = H(2/3, 1/3); trigrams (a,b,a) (b,a,b) → H₃ = 1 bit
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2, abs=1e-12)
    # all-distinct words: H₂ = log₂ 5, H₃ = log₂ 4 over six words
    assert ngram_entropy("one two three four five six") == pytest.approx(
        (2 / 3 * math.log2(5) + 4 / 3 * math.log2(4)) / 2, abs=1e-12)
    assert ngram_entropy("tennis tennis tennis tennis") == 0.0
    assert ngram_entropy("") == 0.0
    assert words("She plays tennis, doesn't she?") == ["She", "plays", "tennis", ",", "doesn't", "she", "?"]
    assert generation_entropy(["a b a b", "tennis tennis tennis"]) == pytest.approx(ngram_entropy("a b a b") / 2)
    assert math.isnan(generation_entropy([]))


def test_tfidf_cosine_matches_hand_built_tfidf():
    corpus = ["tennis is a sport", "chess is a game", "she plays tennis and chess", "the piano is loud"]
    scorer = ReferenceScorer(corpus)
    a, b = "she plays tennis", "tennis is a sport she plays"
    # sklearn defaults: lowercase, tokens of ≥2 word chars, idf = ln((1+n)/(1+df)) + 1, l2 norm
    docs = [[w for w in d.lower().split() if len(w) >= 2] for d in corpus]
    vocab = sorted({w for d in docs for w in d})
    idf = {w: math.log((1 + len(docs)) / (1 + sum(w in d for d in docs))) + 1 for w in vocab}

    def vec(text):
        toks = [w for w in text.lower().split() if len(w) >= 2]
        v = np.array([toks.count(w) * idf[w] for w in vocab])
        return v / np.linalg.norm(v)

    assert scorer.score(a, b) == pytest.approx(float(vec(a) @ vec(b)), abs=1e-12)
    assert scorer.score(a, a) == pytest.approx(1.0)
    assert scorer.score("tennis", "piano") == 0.0
    assert scorer.score("", "tennis") == 0.0


def test_reference_texts_come_from_other_subjects_with_the_object():
    docs = ["Ada Vance plays tennis. Ada Vance is a pilot.",
            "Bo Lee plays tennis. He likes tea.",
            "Cy Ray plays chess. Tennis bores him.",
            "sport: Bo Lee tennis."]
    facts = pd.DataFrame({"subject": ["Ada Vance", "Bo Lee", "Cy Ray"], "relation": ["sport"] * 3,
                          "object": ["tennis", "tennis", "chess"]})
    refs = ReferenceCorpus(docs, facts)
    assert refs.texts_about("tennis", exclude_subject="Ada Vance") == ["Bo Lee plays tennis.", "sport: Bo Lee tennis."]
    assert refs.texts_about("tennis", exclude_subject="Bo Lee") == ["Ada Vance plays tennis."]
    assert ReferenceCorpus(docs).texts_about("chess", exclude_subject="Ada Vance") == ["Cy Ray plays chess."]
    on_topic = refs.score(["Ada Vance plays tennis."], "tennis", "Ada Vance")
    off_topic = refs.score(["Ada Vance plays chess."], "tennis", "Ada Vance")
    assert on_topic > off_topic > 0
    assert math.isnan(refs.score(["x"], "golf", "Ada Vance"))


def test_greedy_generation_equals_manual_argmax_loop(tiny_handle):
    prompts = ["Miles Davis plays the", "Paris is"]
    texts = generate_texts(tiny_handle, prompts, max_new_tokens=4, with_prompt=False)
    tok = tiny_handle.tokenizer
    for prompt, text in zip(prompts, texts):
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            for _ in range(4):
                ids = torch.cat([ids, tiny_handle.hf(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert text == tok.decode(ids[0, -4:], skip_special_tokens=True)


def test_seeded_sampling_is_reproducible_and_leaves_global_rng(tiny_handle):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = generate_texts(tiny_handle, ["Paris is"] * 3, max_new_tokens=6, sample=True, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert a == generate_texts(tiny_handle, ["Paris is"] * 3, max_new_tokens=6, sample=True, seed=7)
    assert a != generate_texts(tiny_handle, ["Paris is"] * 3, max_new_tokens=6, sample=True, seed=8)
    assert all(t.startswith("Paris is") for t in a)
