"""MEMIT end to end: Algorithm 1 stores the associations (Conv1D and Linear), weights untouched /
atomic / revertible, bad input refused, hyperparameters. Eq. 14 alone: test_eq14.py; targets z:
test_targets.py."""

from __future__ import annotations

import pytest
import torch

import core.editing as editing
import core.memit as memit
from core.errors import BadInputError
from core.memit import execute_memit, keys_and_hidden
from core.requests import RequestValidationError
from core.targets import compute_targets
from tests.memit_helpers import (REQUESTS, assert_unchanged, same_bits, small_hparams, snapshot,
                                 write_corpus)
from tests.tiny import make_tiny_handle


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus.txt")


# ---- Algorithm 1 --------------------------------------------------------------------------------

def hidden_at_subject(h, requests, layer):
    _, hid = keys_and_hidden(h, requests, layer, layer, ["{}"])
    return hid


@pytest.mark.parametrize("family", ["gpt2", "llama"])            # Conv1D and Linear W_out
def test_memit_update_stores_the_new_memories(family, corpus):
    """With the bare prompt as the only context and a tiny λ, Eq. 14 is an (almost) hard
    constraint: after Algorithm 1, h at L for each edit equals its target z, and at a single
    edited layer W₁k = W₀k + r = m for the inserted keys."""
    h = make_tiny_handle(family, n_layer=4)
    hp = small_hparams(corpus, layers=[0, 1, 2], mom2_weight=1e-4, context_templates=["{}"])
    z = compute_targets(h, REQUESTS, 2, ["{}"], hp).z
    before = hidden_at_subject(h, REQUESTS, 2)
    applied = editing.edit(h, REQUESTS, hparams=hp)
    after = hidden_at_subject(h, REQUESTS, 2)
    for layer, d in applied.result.deltas.items():
        assert d.shape == h.mlp_out_weight(layer).shape
    err = (after - z).norm(dim=1) / (z - before).norm(dim=1)
    assert err.max() < 1e-2, err

    editing.revert(h, applied)
    one = small_hparams(corpus, layers=[1], mom2_weight=1e-4, context_templates=["{}"])
    K, hL = keys_and_hidden(h, REQUESTS, 1, 1, ["{}"])
    W0 = h.mlp_out_weight(1).detach().clone()
    result = execute_memit(h, REQUESTS, one)
    z1 = compute_targets(h, REQUESTS, 1, ["{}"], one).z
    lin = (lambda W: W.T) if h.spec.layout == "conv1d" else (lambda W: W)      # as (d, d_mlp)
    m = K @ lin(W0).T + (z1 - hL)                                               # m = W₀k + r
    W1 = lin(W0 + result.deltas[1])
    assert torch.allclose(K @ W1.T, m, atol=1e-3 * float(m.abs().max()))
    assert result.stored_fraction[1] == pytest.approx(1.0, abs=1e-3)         # λ → 0: all stored
    assert result.per_edit["stored"].to_numpy() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow
def test_demo_model_edits_take_and_revert(demo_handle):
    """On the trained demo model the preset flips 20 counterfactual facts (ES 100 %)."""
    from core.metrics import counterfact_scores
    from core.model import assets_dir
    from core.requests import load_dataset_requests

    requests, _ = load_dataset_requests(assets_dir() / "world" / "counterfact.json", 20)
    snap = snapshot(demo_handle)
    pre = counterfact_scores(demo_handle, requests)
    applied = editing.edit(demo_handle, requests)
    try:
        post = counterfact_scores(demo_handle, requests)
    finally:
        editing.revert(demo_handle, applied)
    assert_unchanged(demo_handle, snap)
    assert pre["ES"].mean() <= 0.1 and post["ES"].mean() == 1.0
    assert (post["nll_new"] < pre["nll_new"]).all()


# ---- the model is left alone --------------------------------------------------------------------

def test_execute_memit_leaves_weights_bit_exact_and_is_deterministic(tiny_handle, corpus):
    snap = snapshot(tiny_handle)
    hp = small_hparams(corpus)
    r1 = execute_memit(tiny_handle, REQUESTS, hp)
    assert_unchanged(tiny_handle, snap)
    r2 = execute_memit(tiny_handle, REQUESTS, hp)
    assert all(same_bits(r1.deltas[k], r2.deltas[k]) for k in r1.layers)
    assert list(r1.per_edit["subject"]) == [r.subject for r in REQUESTS]
    assert set(r1.timings) >= {"context", "covariance", "targets", "update", "total"}
    assert all(r1.relative_norms[k] > 0 for k in r1.layers)
    assert set(r1.stored_fraction) == set(r1.layers)
    assert all(0 < f < 1 for f in r1.stored_fraction.values())                  # λ C holds some back
    stats = memit.key_statistics(tiny_handle, hp, r1.layers)                     # cached: same C
    for k in r1.layers:                  # RMS output change on the corpus keys, from the same ΔW
        want = memit.output_change(r1.deltas[k], tiny_handle.mlp_out_weight(k), stats[k].C,
                                   tiny_handle.spec.layout)
        assert r1.output_change[k] == pytest.approx(want) and r1.output_change[k] > 0


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_inside_algorithm_1_restores_weights(tiny_handle, corpus, monkeypatch, exc):
    snap = snapshot(tiny_handle)
    calls = []
    real = memit.solve_delta

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:                          # after layer 1 was written into the model
            raise exc
        return real(*a, **k)

    monkeypatch.setattr(memit, "solve_delta", flaky)
    with pytest.raises(type(exc)):
        execute_memit(tiny_handle, REQUESTS, small_hparams(corpus))
    assert len(calls) == 2
    assert_unchanged(tiny_handle, snap)


@pytest.mark.parametrize("exc", [RuntimeError("mid-update"), KeyboardInterrupt(),
                                 torch.OutOfMemoryError("CUDA out of memory")])
def test_apply_is_atomic_on_injected_failure(tiny_handle, corpus, monkeypatch, exc):
    result = execute_memit(tiny_handle, REQUESTS, small_hparams(corpus))
    snap = snapshot(tiny_handle)
    calls = []
    real = editing._add_delta

    def flaky(w, d):
        calls.append(1)
        real(w, d)                                   # layer 1 is already changed when layer 2 fails
        if len(calls) == 2:
            raise exc

    monkeypatch.setattr(editing, "_add_delta", flaky)
    with pytest.raises(type(exc)):
        editing.apply_edit(tiny_handle, result)
    assert_unchanged(tiny_handle, snap)


def test_apply_rejects_nan_and_restores_on_non_finite_weights(tiny_handle, corpus, monkeypatch):
    result = execute_memit(tiny_handle, REQUESTS, small_hparams(corpus))
    snap = snapshot(tiny_handle)
    result.deltas[1] = result.deltas[1].clone()
    result.deltas[1][0, 0] = float("nan")
    with pytest.raises(BadInputError, match="NaN"):
        editing.apply_edit(tiny_handle, result)
    assert_unchanged(tiny_handle, snap)
    result.deltas[1] = torch.zeros_like(result.deltas[1])
    real = editing._add_delta

    def overflow(w, d):                                             # e.g. fp16 overflow in W + ΔW
        real(w, d)
        w.view(-1)[0] = float("inf")

    monkeypatch.setattr(editing, "_add_delta", overflow)
    with pytest.raises(editing.EditFailedError, match="non-finite"):
        editing.apply_edit(tiny_handle, result)
    assert_unchanged(tiny_handle, snap)


def test_revert_is_bit_exact_also_for_stacked_edits(tiny_handle, corpus):
    snap0 = snapshot(tiny_handle)
    a = editing.edit(tiny_handle, REQUESTS[:2], hparams=small_hparams(corpus))
    snap1 = snapshot(tiny_handle)
    b = editing.edit(tiny_handle, REQUESTS[2:], hparams=small_hparams(corpus, layers=[1]))
    assert not same_bits(tiny_handle.mlp_out_weight(1), snap1["transformer.h.1.mlp.c_proj.weight"])
    editing.revert(tiny_handle, b)
    assert_unchanged(tiny_handle, snap1)
    editing.revert(tiny_handle, a)
    assert_unchanged(tiny_handle, snap0)


# ---- bad input: clear message, nothing changed --------------------------------------------------

@pytest.mark.parametrize("requests, hp_changes, match", [
    ([REQUESTS[0], REQUESTS[0].__class__("{} plays the", "Miles Davis", "golf")], {},
     r"row 2, object: conflicts with row 1"),
    ([REQUESTS[0].__class__("{} plays {}", "Miles Davis", "golf")], {}, r"row 1, prompt: .*exactly one"),
    ([REQUESTS[0].__class__("{} plays", "Miles Davis", "  ")], {}, r"row 1, target_new: empty"),
    ([REQUESTS[0].__class__("{} plays", "Miles Davis", "golf", paraphrase_prompts=("He plays",))], {},
     r"subject 'Miles Davis' is absent from the filled prompt"),
    ([], {}, r"no edit requests"),
    (REQUESTS, {"layers": [7]}, r"layers: \[7\] out of range"),
])
def test_bad_input_is_refused_before_any_change(tiny_handle, corpus, requests, hp_changes, match):
    snap = snapshot(tiny_handle)
    with pytest.raises(BadInputError, match=match):
        editing.edit(tiny_handle, requests, hparams=small_hparams(corpus, **hp_changes))
    assert_unchanged(tiny_handle, snap)


def test_target_that_tokenises_to_nothing(corpus):
    """A tokenizer without byte fallback drops characters it does not know."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from core.model import wrap_model
    from tests.tiny import TRAIN_TEXT, make_hf_model

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(TRAIN_TEXT, trainers.BpeTrainer(vocab_size=200, special_tokens=["<eos>"],
                                                            show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", pad_token="<eos>")
    h = wrap_model(make_hf_model("llama", len(tok)), tok, "tiny-nobytes")
    snap = snapshot(h)
    bad = [REQUESTS[0].__class__("{} plays the", "Miles Davis", "日本")]
    with pytest.raises(RequestValidationError, match="row 1, target_new: '日本' tokenises to nothing") as e:
        editing.edit(h, bad, hparams=small_hparams(corpus))
    assert e.value.problems[0].row == 1
    assert_unchanged(h, snap)


def test_unknown_method(tiny_handle):
    snap = snapshot(tiny_handle)
    with pytest.raises(BadInputError, match="unknown method 'mend'.*memit"):
        editing.edit(tiny_handle, REQUESTS, method="mend")
    assert_unchanged(tiny_handle, snap)


def test_duplicates_are_dropped_with_a_warning(tiny_handle, corpus):
    result = execute_memit(tiny_handle, [REQUESTS[0], REQUESTS[1], REQUESTS[0]], small_hparams(corpus))
    assert len(result.requests) == 2
    assert any("row 3 repeats row 1" in n for n in result.notes)


# ---- hyperparameters ----------------------------------------------------------------------------

def test_hparams_presets_reference_json_and_validation(tmp_path):
    from core.hparams import MemitHparams, from_reference_json, preset_for, scaled_layers

    assert scaled_layers(28, range(3, 9), 28) == [3, 4, 5, 6, 7, 8]
    assert scaled_layers(48, range(13, 18), 12) == [3, 4]
    for family in ("gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2"):
        h = make_tiny_handle(family)
        hp = preset_for(h)
        assert hp.layers and max(hp.layers) < h.n_layers
        assert preset_for(h, layers=[2, 1]).layers == [1, 2]
    ref = {"layers": [3, 4, 5, 6, 7, 8], "clamp_norm_factor": 0.75, "layer_selection": "all",
           "fact_token": "subject_last", "v_num_grad_steps": 25, "v_lr": 0.5, "v_loss_layer": 27,
           "v_weight_decay": 0.5, "kl_factor": 0.0625, "mom2_adjustment": True, "mom2_update_weight": 15000,
           "rewrite_module_tmp": "transformer.h.{}.mlp.fc_out", "layer_module_tmp": "transformer.h.{}",
           "mlp_module_tmp": "transformer.h.{}.mlp", "attn_module_tmp": "transformer.h.{}.attn",
           "ln_f_module": "transformer.ln_f", "lm_head_module": "lm_head", "mom2_dataset": "wikipedia",
           "mom2_n_samples": 100000, "mom2_dtype": "float32"}
    (tmp_path / "gptj.json").write_text(__import__("json").dumps(ref))
    hp = from_reference_json(tmp_path / "gptj.json")
    assert (hp.layers, hp.mom2_weight, hp.v_steps, hp.v_lr, hp.clamp_norm_factor, hp.kl_factor,
            hp.v_weight_decay, hp.n_samples, hp.corpus, hp.stats_dtype) == (
        [3, 4, 5, 6, 7, 8], 15000, 25, 0.5, 0.75, 0.0625, 0.5, 100000, "wikitext", "float32")
    assert MemitHparams.from_dict(hp.to_dict()) == hp
    with pytest.raises(BadInputError, match="fact_token"):
        from_reference_json(dict(ref, fact_token="last"))
    with pytest.raises(BadInputError, match="unknown key"):
        from_reference_json(dict(ref, v_magic=1))
    with pytest.raises(BadInputError, match="v_steps"):
        MemitHparams(layers=[1], v_steps=0)
    with pytest.raises(BadInputError, match="stats_dtype"):
        MemitHparams(layers=[1], stats_dtype="int8")
    with pytest.raises(BadInputError, match="context_templates"):
        MemitHparams(layers=[1], context_templates=["no placeholder"])
    with pytest.raises(BadInputError, match="unknown hyperparameter"):
        MemitHparams.from_dict({"layers": [1], "lambda": 3})
