"""MEMIT: Eq. 14 against least squares, batched z against serial and a plain-hook reference,
Algorithm 1 stores the associations (Conv1D and Linear), weights untouched / atomic / revertible."""

from __future__ import annotations

import pytest
import torch

import core.editing as editing
import core.memit as memit
from core.errors import BadInputError
from core.memit import execute_memit, keys_and_hidden, solve_delta, stored_fraction
from core.requests import RequestValidationError
from core.subject import locate_subject
from core.targets import compute_targets
from tests.memit_helpers import (REQUESTS, assert_unchanged, same_bits, small_hparams, snapshot,
                                 write_corpus)
from tests.tiny import make_tiny_handle


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus.txt")


# ---- Eq. 14 -------------------------------------------------------------------------------------

def test_eq14_equals_least_squares_solution_of_eq9():
    g = torch.Generator().manual_seed(0)
    d, d_mlp, n, lam = 6, 10, 4, 3.0
    A = torch.randn(d_mlp, d_mlp, generator=g, dtype=torch.float64)
    C = A @ A.T / d_mlp + 0.1 * torch.eye(d_mlp, dtype=torch.float64)    # random SPD E[kkᵀ]
    K0 = torch.linalg.cholesky(lam * C)                                  # old keys: K0 K0ᵀ = λC
    W0 = torch.randn(d, d_mlp, generator=g, dtype=torch.float64)
    M0 = W0 @ K0                                                         # W0 optimal for them (Eq. 8)
    K1 = torch.randn(d_mlp, n, generator=g, dtype=torch.float64)
    M1 = torch.randn(d, n, generator=g, dtype=torch.float64)
    # Eq. 9 by brute force: W1 = argmin Σ ‖W k − m‖² over old and new pairs
    K, M = torch.cat([K0, K1], 1), torch.cat([M0, M1], 1)
    W1 = torch.linalg.lstsq(K.T, M.T).solution.T
    delta = solve_delta(K1.T, (M1 - W0 @ K1).T, C, lam)                   # rows: keys / residuals
    assert delta.dtype == torch.float64
    assert torch.allclose(delta, W1 - W0, atol=1e-9, rtol=1e-9)


def test_stored_fraction_equals_woodbury_closed_form():
    """K Δᵀ = M (I + M)⁻¹ R with M = K C⁻¹ Kᵀ / λ; the stored share falls as keys crowd the layer."""
    g = torch.Generator().manual_seed(1)
    d, d_mlp, lam = 5, 12, 2.0
    A = torch.randn(d_mlp, d_mlp, generator=g, dtype=torch.float64)
    C = A @ A.T / d_mlp + 0.1 * torch.eye(d_mlp, dtype=torch.float64)
    medians = []
    for n in (2, 6, 11):
        K = torch.randn(n, d_mlp, generator=g, dtype=torch.float64)
        R = torch.randn(n, d, generator=g, dtype=torch.float64)
        frac = stored_fraction(K, R, solve_delta(K, R, C, lam))
        M = K @ torch.linalg.solve(C, K.T) / lam                                # (n, n)
        realised = M @ torch.linalg.solve(torch.eye(n, dtype=torch.float64) + M, R)
        expected = (realised * R).sum(1) / (R * R).sum(1)
        assert torch.allclose(frac, expected, atol=1e-10)
        medians.append(float(frac.median()))
    assert 0 < medians[2] < medians[0] < 1                                       # crowding costs storage
    K = torch.randn(3, d_mlp, generator=g, dtype=torch.float64)
    R = torch.randn(3, d, generator=g, dtype=torch.float64)
    assert torch.allclose(stored_fraction(K, R, solve_delta(K, R, C, 1e-9)), torch.ones(3, dtype=torch.float64))


def test_key_capacity_is_what_an_update_with_orthonormal_residuals_does():
    """Closed-form capacity (keys only) = stored share and leak of a real Eq. 14 update whose
    residuals are orthonormal; M's eigenvalues from the Woodbury form."""
    from core.capacity import key_capacity

    g = torch.Generator().manual_seed(2)
    d, d_mlp, n, m, lam = 16, 12, 9, 5, 0.7
    A = torch.randn(d_mlp, d_mlp, generator=g, dtype=torch.float64)
    C = A @ A.T / d_mlp + 0.1 * torch.eye(d_mlp, dtype=torch.float64)
    K = torch.randn(n, d_mlp, generator=g, dtype=torch.float64)
    K_out = torch.randn(m, d_mlp, generator=g, dtype=torch.float64)
    R = torch.linalg.qr(torch.randn(d, n, generator=g, dtype=torch.float64))[0].T   # (n, d) orthonormal rows
    delta = solve_delta(K, R, C, lam)
    cap = key_capacity(K, C, lam, K_out)
    assert torch.allclose(cap["stored"], stored_fraction(K, R, delta), atol=1e-10)
    assert torch.allclose(cap["leak"], (K_out @ delta.T).norm(dim=1), atol=1e-10)
    M = K @ torch.linalg.inv(C) @ K.T / lam
    assert torch.allclose(cap["eig"], torch.linalg.eigvalsh(M), atol=1e-8)
    assert "leak" not in key_capacity(K, C, lam)
    more = key_capacity(torch.cat([K, torch.randn(3, d_mlp, generator=g, dtype=torch.float64)]), C, lam)
    assert float(more["stored"].median()) < float(cap["stored"].median())    # crowding costs storage
    dead = C.clone()                                    # a unit that never fires: C singular
    dead[0, :] = dead[:, 0] = 0.0
    K0 = K.clone()
    K0[:, 0] = 0.0
    odd = key_capacity(K0, dead, lam)
    assert torch.isfinite(odd["eig"]).all() and (odd["eig"] >= 0).all()
    assert ((odd["stored"] > 0) & (odd["stored"] < 1)).all()


def test_eq14_with_a_unit_that_never_fires_is_the_reduced_solution():
    """A dead unit (zero row/column of C, zero in every key) makes λC + KᵀK singular: Δ is then
    the solution without that unit, with a zero column for it."""
    g = torch.Generator().manual_seed(3)
    d, d_mlp, n, lam = 4, 7, 3, 2.0
    A = torch.randn(d_mlp, d_mlp, generator=g, dtype=torch.float64)
    C = A @ A.T / d_mlp + 0.1 * torch.eye(d_mlp, dtype=torch.float64)
    C[2, :] = C[:, 2] = 0.0
    K = torch.randn(n, d_mlp, generator=g, dtype=torch.float64)
    K[:, 2] = 0.0
    R = torch.randn(n, d, generator=g, dtype=torch.float64)
    delta = solve_delta(K, R, C, lam)
    keep = [i for i in range(d_mlp) if i != 2]
    reduced = solve_delta(K[:, keep], R, C[keep][:, keep], lam)
    assert torch.isfinite(delta).all() and delta[:, 2].abs().max() < 1e-12
    assert torch.allclose(delta[:, keep], reduced, atol=1e-9)


# ---- targets z (Eq. 16) -------------------------------------------------------------------------

def reference_z(handle, req, layer, templates, hp) -> torch.Tensor:
    """One edit the public implementation's way: unpadded plain-HF forwards, a forward hook,
    torch.optim.Adam — independent of the batched code."""
    tok, hf = handle.tokenizer, handle.hf
    texts = [c.replace("{}", req.prompt, 1).replace("{}", req.subject, 1) for c in templates]
    rows = []
    for text in texts:
        full = tok(text + " " + req.target_new)["input_ids"]
        n_prompt = len(tok(text)["input_ids"])
        rows.append((full[:-1], full[n_prompt:], locate_subject(tok, text, req.subject).last, n_prompt))
    kl_text = f"{req.subject} is a"
    kl_ids, kl_pos = tok(kl_text)["input_ids"], locate_subject(tok, kl_text, req.subject).last
    delta = torch.zeros(handle.d_model, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    state = {}

    def run(ids, pos):
        def hook(module, inputs, output):
            state.setdefault("h", output[0, pos].detach().clone())
            out = output.clone()
            out[0, pos] = out[0, pos] + delta
            return out
        hd = handle.hf_layer(layer).register_forward_hook(hook)
        try:
            return hf(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        finally:
            hd.remove()

    kl_init = None
    for it in range(hp.v_steps):
        opt.zero_grad()
        nll = 0
        for ids, target, pos, n_prompt in rows:
            lp = run(ids, pos)
            nll = nll - torch.stack([lp[n_prompt - 1 + j, t] for j, t in enumerate(target)]).mean()
        nll = nll / len(rows)
        kl_lp = run(kl_ids, kl_pos)[kl_pos]
        kl_init = kl_lp.detach() if kl_init is None else kl_init
        kl = hp.kl_factor * (kl_lp.exp() * (kl_lp - kl_init)).sum()
        h0 = state["h"]
        loss = nll + kl + hp.v_weight_decay * delta.norm() / h0.norm() ** 2
        if loss < hp.v_loss_tol or it == hp.v_steps - 1:
            break
        loss.backward()
        opt.step()
        with torch.no_grad():
            max_norm = hp.clamp_norm_factor * h0.norm()
            if delta.norm() > max_norm:
                delta *= max_norm / delta.norm()
    return state["h"] + delta.detach()


def test_batches_group_edits_by_tail_length(monkeypatch, corpus):
    """Chunks hold edits with similar token counts after the subject (less left padding fed)."""
    import core.targets as targets

    h = make_tiny_handle("gpt2")
    tails = [targets.tail_tokens(h.tokenizer, r) for r in REQUESTS]
    rest = REQUESTS[0].prompt[REQUESTS[0].prompt.index("{}") + 2:] + " " + REQUESTS[0].target_new
    assert tails[0] == len(h.tokenizer(rest, add_special_tokens=False)["input_ids"])
    seen = []
    original = targets._optimise
    monkeypatch.setattr(targets, "_optimise", lambda hd, reqs, *a: seen.append(
        [targets.tail_tokens(hd.tokenizer, r) for r in reqs]) or original(hd, reqs, *a))
    hp = small_hparams(corpus, v_steps=2)
    res = compute_targets(h, REQUESTS, 1, ["{}"], hp, batch_size=2)
    assert [t for chunk in seen for t in chunk] == sorted(tails) and len(seen) == 2
    ref = compute_targets(h, REQUESTS, 1, ["{}"], hp, batch_size=1)       # order does not matter
    assert torch.allclose(res.z, ref.z, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gptj", "gpt_neox", "qwen2"])
def test_batched_z_equals_serial_and_plain_hook_reference(family, corpus):
    h = make_tiny_handle(family)
    hp = small_hparams(corpus, v_loss_tol=0.0)
    templates = hp.context_templates
    batched = compute_targets(h, REQUESTS, 1, templates, hp, batch_size=0)
    serial = compute_targets(h, REQUESTS, 1, templates, hp, batch_size=1)
    chunks = compute_targets(h, REQUESTS, 1, templates, hp, batch_size=3)
    assert batched.steps == serial.steps == [hp.v_steps - 1] * len(REQUESTS)
    assert (batched.z - batched.h).norm(dim=1).min() > 1e-3                     # δ really moved
    # after step 0 (one full forward) only tokens from the earliest last-subject token on are fed
    first = compute_targets(h, REQUESTS, 1, templates, hp.replace(v_steps=1), batch_size=0)
    assert first.forwards == 1 and batched.forwards == hp.v_steps
    assert batched.tokens < batched.forwards * first.tokens               # (equal without reuse)
    for other in (serial, chunks):
        assert torch.allclose(batched.z, other.z, atol=1e-5, rtol=1e-4)
        assert torch.allclose(torch.tensor(batched.loss), torch.tensor(other.loss), atol=1e-5)
    for i, req in enumerate(REQUESTS):
        ref = reference_z(h, req, 1, templates, hp)
        assert torch.allclose(batched.z[i], ref, atol=1e-5, rtol=1e-4), i


def test_early_stopped_edits_stop_moving(corpus):
    h = make_tiny_handle("gpt2")
    hp = small_hparams(corpus, v_steps=6)
    first = compute_targets(h, REQUESTS, 1, hp.context_templates, hp.replace(v_steps=1), batch_size=0)
    losses = sorted(first.loss)
    tol = (losses[0] + losses[1]) / 2                                           # only the easiest stops
    res = compute_targets(h, REQUESTS, 1, hp.context_templates, hp.replace(v_loss_tol=tol), batch_size=0)
    easiest = first.loss.index(losses[0])
    assert res.steps[easiest] == 0 and torch.equal(res.z[easiest], res.h[easiest])
    assert all(s == hp.v_steps - 1 for i, s in enumerate(res.steps) if i != easiest)
    i = 1 if easiest != 1 else 2
    alone = compute_targets(h, [REQUESTS[i]], 1, hp.context_templates, hp.replace(v_loss_tol=tol))
    assert torch.allclose(alone.z[0], res.z[i], atol=1e-5, rtol=1e-4)           # others unaffected


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


def test_generated_context_templates_are_seeded(tiny_handle):
    from core.targets import generate_context_templates

    a = generate_context_templates(tiny_handle, 3, 6, seed=0)
    assert a == generate_context_templates(tiny_handle, 3, 6, seed=0)
    assert a[0] == "{}" and len(a) == 4 and all(t.endswith(". {}") and t.count("{}") == 1 for t in a[1:])
    assert a[1].startswith("The") and a[2].startswith("Therefore")
    assert a != generate_context_templates(tiny_handle, 3, 6, seed=1)


def test_edits_with_the_same_subject_key_share_one_delta(corpus):
    """Two relations of one subject at the start of the prompt have identical keys; they get one
    z (optimised for both), batched and serially alike."""
    from core.requests import EditRequest

    h = make_tiny_handle("gpt2")
    hp = small_hparams(corpus, v_loss_tol=0.0)
    reqs = [EditRequest("{} plays the", "Miles Davis", "chess"), REQUESTS[1],
            EditRequest("{} works for", "Miles Davis", "Toyota"),
            EditRequest("The teacher of {} is", "Miles Davis", "Kara")]        # other key: own δ
    b = compute_targets(h, reqs, 1, hp.context_templates, hp, batch_size=0)
    s = compute_targets(h, reqs, 1, hp.context_templates, hp, batch_size=1)
    assert torch.equal(b.z[0], b.z[2]) and not torch.allclose(b.z[0], b.z[3])
    assert torch.allclose(b.z, s.z, atol=1e-5, rtol=1e-4)
    assert b.loss[0] != b.loss[2]                                                # own NLL per edit
