"""Metrics (Appendix C): batched NLL / top-1 against unpadded plain-HF forwards; ES/PS/NS logic."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from core.metrics import (counterfact_scores, harmonic_mean, summarize, summarize_zsre, target_scores,
                          zsre_scores)
from core.requests import EditRequest
from tests.tiny import make_tiny_handle


def plain_nll_and_top1(handle, prompt, target):
    """Independent: tokenise prompt and " " + target separately, one unpadded forward."""
    tok = handle.tokenizer
    p = tok(prompt)["input_ids"]
    t = tok(" " + target, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = handle.hf(input_ids=torch.tensor([p + t])).logits[0].log_softmax(-1)
    rows = lp[len(p) - 1: len(p) - 1 + len(t)]
    nll = -rows[torch.arange(len(t)), torch.tensor(t)].mean().item()
    top1 = (rows.argmax(-1) == torch.tensor(t)).float().mean().item()
    return nll, top1


ITEMS = [("Miles Davis plays the", "trumpet"), ("The capital of Norvania is", "Keldport"),
         ("Paris is", "France"), ("Kara Selwyn works for", "Brightwell Systems"), ("A", "B C D")]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_target_scores_equal_unpadded_forwards(family):
    h = make_tiny_handle(family)
    nll, acc = target_scores(h, ITEMS, batch_size=2)
    for (p, t), x, a in zip(ITEMS, nll, acc):
        ref_nll, ref_acc = plain_nll_and_top1(h, p, t)
        assert x == pytest.approx(ref_nll, abs=1e-5) and a == pytest.approx(ref_acc)


def test_top1_is_one_for_the_models_own_greedy_continuation(tiny_handle):
    tok = tiny_handle.tokenizer
    ids = tok("Miles Davis plays the")["input_ids"]
    with torch.no_grad():
        nxt = tiny_handle.hf(input_ids=torch.tensor([ids])).logits[0, -1].argmax().item()
    word = tok.decode([nxt])
    if not word.startswith(" ") or not word.strip():
        pytest.skip("greedy token is not a space-initial word for this random model")
    _, acc = target_scores(tiny_handle, [("Miles Davis plays the", word.strip())])
    assert acc[0] == 1.0


def test_counterfact_scores_follow_the_definitions(tiny_handle):
    reqs = [EditRequest("{} plays the", "Miles Davis", "chess", "trumpet",
                        paraphrase_prompts=("Miles Davis is a player of", "Miles Davis often plays the"),
                        neighborhood_prompts=("Orla plays the", "Kara plays the", "Toyota plays the")),
            EditRequest("The capital of {} is", "Norvania", "Rome")]            # no true object
    df = counterfact_scores(tiny_handle, reqs, batch_size=3)
    r = df.iloc[0]
    n_new, _ = plain_nll_and_top1(tiny_handle, "Miles Davis plays the", "chess")
    n_true, _ = plain_nll_and_top1(tiny_handle, "Miles Davis plays the", "trumpet")
    assert r.ES == float(n_new < n_true) and r.nll_new == pytest.approx(n_new, abs=1e-5)
    assert r.EM == pytest.approx(math.exp(-n_new) - math.exp(-n_true), abs=1e-6)
    para = [plain_nll_and_top1(tiny_handle, p, "chess")[0] < plain_nll_and_top1(tiny_handle, p, "trumpet")[0]
            for p in reqs[0].paraphrase_prompts]
    neigh = [plain_nll_and_top1(tiny_handle, p, "chess")[0] > plain_nll_and_top1(tiny_handle, p, "trumpet")[0]
             for p in reqs[0].neighborhood_prompts]
    assert r.PS == pytest.approx(sum(para) / 2) and r.NS == pytest.approx(sum(neigh) / 3)
    assert math.isnan(df.iloc[1].ES) and not math.isnan(df.iloc[1].new_top1)


def test_summarize_in_percent_with_harmonic_mean():
    df = pd.DataFrame({"ES": [1.0, 1.0, 0.0, 1.0], "PS": [0.5, 1.0, 0.5, 1.0], "NS": [1.0, 0.8, 0.9, 0.9],
                       "EM": [0.1] * 4, "PM": [0.2] * 4, "NM": [0.3] * 4, "new_top1": [1, 0, 1, 1]})
    s = summarize(df)
    assert s["n"] == 4 and s["ES"] == 75.0 and s["PS"] == 75.0 and s["NS"] == pytest.approx(90.0)
    assert s["S"] == pytest.approx(3 / (1 / 75 + 1 / 75 + 1 / 90))
    assert s["EM"] == pytest.approx(10.0) and s["new_top1"] == 75.0
    assert harmonic_mean([50.0, 0.0, 80.0]) == 0.0 and harmonic_mean([50.0, math.nan]) == 50.0
    assert math.isnan(summarize(df.assign(PS=math.nan))["PS"])


def test_zsre_token_accuracies(tiny_handle):
    reqs = [EditRequest("What does {} play?", "Miles Davis", "trumpet",
                        paraphrase_prompts=("Which instrument does Miles Davis play?",),
                        neighborhood_prompts=("nq question: who is the capital?",), neighborhood_target="Paris")]
    df = zsre_scores(tiny_handle, reqs)
    _, eff = plain_nll_and_top1(tiny_handle, "What does Miles Davis play?", "trumpet")
    _, spec = plain_nll_and_top1(tiny_handle, "nq question: who is the capital?", "Paris")
    assert df.iloc[0].efficacy == pytest.approx(eff) and df.iloc[0].specificity == pytest.approx(spec)
    s = summarize_zsre(df)
    assert s["efficacy"] == pytest.approx(eff * 100) and s["n"] == 1


def test_neighbours_edited_under_the_same_relation_can_be_left_out(tiny_handle):
    from core.metrics import edited_neighbours

    a = EditRequest("{} plays the", "Miles Davis", "chess", "trumpet", relation_id="P1",
                    neighborhood_prompts=("Kara Selwyn plays the", "Orla plays the"))
    b = EditRequest("{} plays the", "Kara Selwyn", "golf", "piano", relation_id="P1",
                    neighborhood_prompts=("Miles Davis plays the",))
    c = EditRequest("{} works for", "Orla", "Toyota", "Brightwell", relation_id="P2")
    assert edited_neighbours([a, b, c]) == [{0}, {0}, set()]
    df = counterfact_scores(tiny_handle, [a, b, c], exclude_edited_neighbours=True)
    full = counterfact_scores(tiny_handle, [a, b, c])
    assert df.n_neighbours_excluded.tolist() == [1, 1, 0] and math.isnan(df.NS[1])
    n_orla = plain_nll_and_top1(tiny_handle, "Orla plays the", "chess")[0] > \
        plain_nll_and_top1(tiny_handle, "Orla plays the", "trumpet")[0]
    assert df.NS[0] == float(n_orla) and not math.isnan(full.NS[1])
    assert summarize(df)["neighbours_excluded"] == 2


def test_ns_outside_counts_only_neighbours_the_batch_does_not_edit(tiny_handle):
    from core.metrics import outside_neighbours

    a = EditRequest("{} plays the", "Miles Davis", "chess", "trumpet", relation_id="P1",
                    neighborhood_prompts=("Kara Selwyn plays the",     # edited, same relation: left out
                                          "Orla plays the",            # edited under another relation
                                          "Toyota plays the"))         # not edited: outside
    b = EditRequest("{} plays the", "Kara Selwyn", "golf", "piano", relation_id="P1",
                    neighborhood_prompts=("Miles Davis plays the",))
    c = EditRequest("{} works for", "Orla", "Toyota Motors", "Brightwell", relation_id="P2")
    assert outside_neighbours([a, b, c]) == [{2}, set(), set()]
    df = counterfact_scores(tiny_handle, [a, b, c], exclude_edited_neighbours=True)

    def wins_true(p):
        return float(plain_nll_and_top1(tiny_handle, p, "chess")[0] > plain_nll_and_top1(tiny_handle, p, "trumpet")[0])

    assert df.n_neighbours_outside.tolist() == [1, 0, 0]
    assert df.NS_outside[0] == wins_true("Toyota plays the")
    assert df.NS[0] == pytest.approx((wins_true("Orla plays the") + wins_true("Toyota plays the")) / 2)
    assert math.isnan(df.NS_outside[1]) and math.isnan(df.NS_outside[2])
    s = summarize(df)
    assert s["NS_outside"] == 100 * wins_true("Toyota plays the") and s["neighbours_outside"] == 1


def test_neighbour_sets_match_subjects_as_whole_names():
    from core.metrics import edited_neighbours, outside_neighbours, subject_finder

    named = subject_finder(["Orla", "Rose", "Wanda Rose Bramsey", "C++"])
    assert named("Orlando plays the") == set()                     # inside a longer word
    assert named("Orla's sister plays the") == {"Orla"}            # followed by punctuation
    assert named("Wanda Rose Bramsey plays the") == {"Wanda Rose Bramsey"}   # longest name wins
    assert named("Rose and Orla play the") == {"Rose", "Orla"}
    assert named("C++ is written in") == {"C++"}
    assert subject_finder([])("anything") == set()

    a = EditRequest("{} plays the", "Orla", "chess", "trumpet", relation_id="P1",
                    neighborhood_prompts=("Orlando plays the", "Rose plays the", "Toyota plays the"))
    b = EditRequest("{} plays the", "Rose", "golf", "piano", relation_id="P1",
                    neighborhood_prompts=("Orla plays the",))
    assert edited_neighbours([a, b]) == [{1}, {0}]
    assert outside_neighbours([a, b]) == [{0, 2}, set()]


def test_an_edit_to_its_own_true_object_is_not_scored_as_counterfact(tiny_handle):
    prompts = dict(paraphrase_prompts=("Miles Davis is a player of",), neighborhood_prompts=("Orla plays the",))
    reqs = [EditRequest("{} plays the", "Miles Davis", "chess", "trumpet", **prompts),
            EditRequest("{} plays the", "Miles Davis", "trumpet", " trumpet ", **prompts)]   # same object
    df = counterfact_scores(tiny_handle, reqs)
    n_new, top1 = plain_nll_and_top1(tiny_handle, "Miles Davis plays the", "trumpet")
    assert not math.isnan(df.ES[0])
    for k in ("ES", "PS", "NS", "EM", "PM", "NM", "nll_true"):
        assert math.isnan(df[k][1]), k              # an NLL compared with itself would give ES = NS = 0
    assert df.new_top1[1] == top1 and df.n_neighbours_outside[1] == 0
    assert summarize(df)["ES"] == df.ES[0] * 100    # the mean is over the edit that changes a fact
