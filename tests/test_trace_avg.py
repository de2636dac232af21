"""Averaged causal traces: fact filtering, token categories, averages vs per-fact traces."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.errors import BadInputError
from core.trace_avg import (
    CATEGORIES, Fact, average_traces, drop_duplicates, known_mask, load_facts, subject_embedding_std,
    token_categories,
)
from core.tracing import TraceSettings, prepare_trace, run_grid
from core.tracing_severed import run_severed

SETTINGS = TraceSettings(noise=3.0, samples=2, window=2, seed=3)


def top1(handle, prompt: str) -> str:
    """The model's greedy next token, by a plain HF forward (independent of the filter)."""
    ids = handle.tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return handle.tokenizer.decode([int(handle.hf(input_ids=ids).logits[0, -1].argmax())])


def test_token_categories():
    # prompt of 8 tokens, subject = tokens 1..3
    c = token_categories((1, 4), 8)
    assert c == {"first_subject": [1], "middle_subject": [2], "last_subject": [3],
                 "first_subsequent": [4], "further": [5, 6], "last": [7]}
    # one-token subject right before the last token
    c = token_categories((2, 3), 4)
    assert c["first_subject"] == c["last_subject"] == [2] and c["middle_subject"] == []
    assert c["first_subsequent"] == [3] and c["further"] == [] and c["last"] == [3]
    # subject ends the prompt: no subsequent tokens
    c = token_categories((0, 3), 3)
    assert c["first_subsequent"] == [] and c["further"] == [] and c["last"] == [2]


def test_load_facts(tmp_path):
    p = tmp_path / "k.json"
    p.write_text(json.dumps([
        {"known_id": 7, "subject": "Miles Davis", "attribute": "trumpet", "prompt": "Miles Davis plays the"},
        {"subject": "Toyota", "attribute": "Japan", "template": "{} is headquartered in"},
    ]))
    facts = load_facts(p)
    assert facts[0] == Fact("Miles Davis plays the", "Miles Davis", "trumpet", 7)
    assert facts[1].prompt == "Toyota is headquartered in"
    for bad in ["[{\"subject\": \"x\"}]", "{}", "not json", "[]"]:
        p.write_text(bad)
        with pytest.raises(BadInputError) as err:
            load_facts(p)
        assert err.value.field == "facts"
    with pytest.raises(BadInputError):
        load_facts(tmp_path / "missing.json")


def test_known_mask_matches_plain_forwards(tiny_handle):
    prompts = ["Miles Davis plays the", "Toyota is headquartered in", "The capital of Norvania is",
               "Kara Selwyn works for"]
    subjects = ["Miles Davis", "Toyota", "Norvania", "Kara Selwyn"]
    right = [Fact(p, s, top1(tiny_handle, p)) for p, s in zip(prompts, subjects)]
    wrong = [Fact(p, s, "zebra") for p, s in zip(prompts, subjects) if top1(tiny_handle, p).strip() != "z"]
    invalid = [Fact("Miles Davis plays the", "Paris", "x")]
    mask = known_mask(tiny_handle, right + wrong + invalid, batch_size=3)   # several padded batches
    assert mask == [True] * len(right) + [False] * len(wrong) + [None]


def test_average_equals_mean_of_single_traces(tiny_handle):
    prompts = ["Miles Davis plays the trumpet and", "The capital of Norvania is",
               "Kara Selwyn works for"]
    subjects = ["Miles Davis", "Norvania", "Kara Selwyn"]
    facts = [Fact(p, s, top1(tiny_handle, p), i) for i, (p, s) in enumerate(zip(prompts, subjects))]
    facts.insert(1, Fact("Toyota is headquartered in", "Toyota", "zebra", 99))   # wrong: skipped
    seen = []
    avg = average_traces(tiny_handle, facts, settings=SETTINGS, progress=lambda *a: seen.append(a))
    known = [f for f in facts if f.known_id != 99]
    assert avg.n_facts == 3 and avg.n_skipped_wrong == 1 and avg.known_ids == [0, 1, 2]
    assert seen[-1] == (3, 3, "tracing")
    sigma = subject_embedding_std(tiny_handle, known)
    assert avg.sigma == pytest.approx(sigma)
    # Independent average: trace each fact, collect its category rows, average per token instance.
    fixed = TraceSettings(**{**SETTINGS.__dict__, "sigma": sigma})
    rows = {k: {c: [] for c in CATEGORIES} for k in ("hidden", "mlp", "attn")}
    gaps = []
    for f in known:
        prep = prepare_trace(tiny_handle, f.prompt, f.subject, f.answer, fixed)
        T, (s0, s1) = prep.n_tokens, (prep.span.start, prep.span.end)
        for k in rows:
            ie = run_grid(prep, k).scores - prep.corrupted_prob
            rows[k]["first_subject"].append(ie[s0])
            rows[k]["middle_subject"] += list(ie[s0 + 1:s1 - 1])
            rows[k]["last_subject"].append(ie[s1 - 1])
            if s1 < T:
                rows[k]["first_subsequent"].append(ie[s1])
                rows[k]["further"] += list(ie[s1 + 1:T - 1])
            rows[k]["last"].append(ie[T - 1])
        sev = run_severed(prep)
        gaps.append(sev.normal - sev.mlp_severed)
    for k in rows:
        for c in CATEGORIES:
            if rows[k][c]:
                np.testing.assert_allclose(avg.effects[k][c], np.mean(rows[k][c], axis=0), atol=1e-9)
            else:
                assert np.isnan(avg.effects[k][c]).all()
    np.testing.assert_allclose(avg.severed.gap, np.mean(gaps, axis=0), atol=1e-9)
    assert avg.suggestion.curve == pytest.approx(list(avg.severed.gap))
    d = avg.to_dict()
    assert d["n_facts"] == 3 and d["n_layers"] == tiny_handle.n_layers
    assert set(d["effects"]) == {"hidden", "mlp", "attn"}
    assert all(len(v) == tiny_handle.n_layers for v in d["effects"]["mlp"].values())
    assert d["suggested_layers"] == avg.suggestion.layers


def test_average_n_and_errors(tiny_handle):
    p = "Miles Davis plays the"
    facts = [Fact(q, s, top1(tiny_handle, q), i) for i, (q, s) in enumerate(
        [(p, "Miles Davis"), ("The capital of Norvania is", "Norvania"), ("Kara Selwyn works for", "Kara Selwyn")])]
    avg = average_traces(tiny_handle, facts, n=2, kinds=["mlp"], severed=False, settings=SETTINGS)
    assert avg.n_facts == 2 and avg.known_ids == [0, 1] and set(avg.effects) == {"mlp"} and avg.severed is None
    assert avg.suggestion.source.startswith("MLP indirect effect")
    with pytest.raises(BadInputError) as err:
        average_traces(tiny_handle, facts, n=0)
    assert err.value.field == "n"
    from core.errors import WorkbenchError
    with pytest.raises(WorkbenchError):
        average_traces(tiny_handle, [Fact(p, "Miles Davis", "zebra")], settings=SETTINGS)


# ---- duplicate facts ------------------------------------------------------------------------------

def test_drop_duplicates_keeps_the_first_of_each_fact():
    a, b = Fact("Miles Davis plays the", "Miles Davis", "trumpet", 0), Fact("Toyota is in", "Toyota", "Japan", 1)
    again = Fact(a.prompt, a.subject, a.answer, 7)                 # same fact under another known_id
    near = [Fact(a.prompt, a.subject, "piano", 8), Fact(a.prompt, "Miles", a.answer, 9),
            Fact(a.prompt + " ", a.subject, a.answer, 10)]        # differ in one field: all kept
    kept, dropped = drop_duplicates([a, b, again, *near, b])
    assert kept == [a, b, *near] and dropped == 2
    assert drop_duplicates([]) == ([], 0)


def test_duplicates_count_once_in_the_average(tiny_handle):
    """A knowns list with repeats averages exactly like the list without them (effects, severed
    gap, σ, probabilities), reports how many it dropped, and --n counts distinct facts."""
    p = ["Miles Davis plays the trumpet and", "The capital of Norvania is", "Kara Selwyn works for"]
    subjects = ["Miles Davis", "Norvania", "Kara Selwyn"]
    a, b, c = (Fact(q, s, top1(tiny_handle, q), i) for i, (q, s) in enumerate(zip(p, subjects)))
    dup = [a, Fact(a.prompt, a.subject, a.answer, 10), b, a, Fact(b.prompt, b.subject, b.answer, 11)]
    with_dups = average_traces(tiny_handle, dup, settings=SETTINGS)
    distinct = average_traces(tiny_handle, [a, b], settings=SETTINGS)
    assert with_dups.n_duplicates == 3 and distinct.n_duplicates == 0
    assert with_dups.n_facts == 2 and with_dups.known_ids == [0, 1]
    assert with_dups.n_skipped_wrong == with_dups.n_skipped_invalid == 0
    assert with_dups.sigma == distinct.sigma == pytest.approx(subject_embedding_std(tiny_handle, [a, b]))
    for k in with_dups.effects:
        for cat in CATEGORIES:
            np.testing.assert_array_equal(with_dups.effects[k][cat], distinct.effects[k][cat])
    np.testing.assert_array_equal(with_dups.severed.gap, distinct.severed.gap)
    assert (with_dups.clean_prob, with_dups.corrupted_prob) == (distinct.clean_prob, distinct.corrupted_prob)
    assert with_dups.counts == distinct.counts
    # the test can fail: a and b differ, so counting a three times would move the mean
    only_a = average_traces(tiny_handle, [a], settings=TraceSettings(**{**SETTINGS.__dict__, "sigma": distinct.sigma}))
    assert not np.allclose(only_a.effects["mlp"]["last_subject"], distinct.effects["mlp"]["last_subject"])
    d = with_dups.to_dict()
    assert d["n_duplicates"] == 3 and d["n_facts"] == 2
    # n counts distinct facts: the first two distinct are a and b, not a and its repeat
    first_two = average_traces(tiny_handle, dup + [c], n=2, kinds=["mlp"], severed=False, settings=SETTINGS)
    assert first_two.n_facts == 2 and first_two.known_ids == [0, 1] and first_two.n_duplicates == 3
    np.testing.assert_array_equal(first_two.effects["mlp"]["last"], distinct.effects["mlp"]["last"])
