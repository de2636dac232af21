"""Baselines: ROME's rank-one update against a generic KKT solve and against keys read with plain
torch hooks; sequential ROME and FT-W on a tiny model (only their layer changes, the target's NLL
drops, the model is left as found)."""

from __future__ import annotations

import pytest
import torch

from core.covariance import layer_covariances
from core.editing import METHODS, apply_edit, edit, revert
from core.ft import FtHparams, execute_ft, ft_hparams
from core.hparams import MemitHparams
from core.metrics import target_scores
from core.requests import EditRequest
from core.rome import execute_rome, rank_one_update, rome_layer
from core.targets import place
from tests.tiny import TRAIN_TEXT

REQS = [EditRequest(prompt="{} plays the", subject="Miles Davis", target_new="chess", target_true="trumpet"),
        EditRequest(prompt="{} is in the city of", subject="The Eiffel Tower", target_new="Rome",
                    target_true="Paris")]


@pytest.fixture
def hp(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TRAIN_TEXT * 3) + "\n")
    return MemitHparams(layers=[1], corpus=str(corpus), n_samples=100, v_steps=15, n_context=2,
                        context_length=3, clamp_norm_factor=4.0, kl_factor=0.0)


def all_params(handle):
    return {k: v.detach().clone() for k, v in handle.hf.state_dict().items()}


def test_rank_one_update_is_the_constrained_least_change():
    torch.manual_seed(0)
    d, m = 3, 5
    k, delta = torch.randn(m, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    A = torch.randn(m, m, dtype=torch.float64)
    C = A @ A.T + 0.5 * torch.eye(m, dtype=torch.float64)
    upd = rank_one_update(k, delta, C)
    # KKT system of  min tr(Δ C Δᵀ)  s.t.  Δ k = δ,  with column-major vec(Δ) (d·m unknowns)
    Q = torch.kron(C, torch.eye(d, dtype=torch.float64))          # tr(ΔCΔᵀ) = vec(Δ)ᵀ Q vec(Δ)
    B = torch.kron(k.unsqueeze(0), torch.eye(d, dtype=torch.float64))  # B vec(Δ) = Δ k
    kkt = torch.cat([torch.cat([2 * Q, B.T], 1), torch.cat([B, torch.zeros(d, d, dtype=torch.float64)], 1)])
    sol = torch.linalg.solve(kkt, torch.cat([torch.zeros(d * m, dtype=torch.float64), delta]))
    expected = sol[:d * m].reshape(m, d).T                        # un-vec (column-major)
    assert torch.allclose(upd, expected, atol=1e-10)
    assert torch.allclose(upd @ k, delta, atol=1e-12)             # Ŵk* = Wk* + δ = v*
    assert torch.linalg.matrix_rank(upd).item() == 1
    assert rome_layer([3, 4, 5, 6, 7, 8]) == 5 and rome_layer([0, 1, 2]) == 1


def hooked_key(handle, layer, templates, req):
    """k*: W_out input at the last subject token, read with a plain forward pre-hook, averaged
    over the bare prompt and (separately) the prefixed prompts, as Eq. 19."""
    seen = []
    hook = handle.mlp_out_module(layer).register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    keys = []
    try:
        for t in templates:
            text, c0, c1 = place(t, req.prompt, req.subject)
            enc = handle.tokenizer(text, return_offsets_mapping=True)
            last = max(i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < c1 and b > c0)
            with torch.no_grad():
                handle.hf(torch.tensor([enc["input_ids"]]))
            keys.append(seen.pop()[0, last].double())
    finally:
        hook.remove()
    return (keys[0] + torch.stack(keys[1:]).mean(0)) / 2


def test_rome_single_edit_is_rank_one_along_inverse_covariance_key(tiny_handle, hp):
    h = tiny_handle
    start = all_params(h)
    result = execute_rome(h, REQS[:1], hp)
    assert all(torch.equal(v, start[k]) for k, v in all_params(h).items())      # left as found
    assert result.method == "rome" and result.layers == [1] and set(result.deltas) == {1}
    D = result.deltas[1].double().T                        # conv1d stored (d_mlp, d) → (d, d_mlp)
    s = torch.linalg.svdvals(D)
    assert s[1] / s[0] < 1e-5                              # rank one
    k = hooked_key(h, 1, result.hparams["context_templates"], REQS[0])
    C = layer_covariances(h, [1], corpus=hp.corpus, n_samples=hp.n_samples)[1].C.double()
    u = torch.linalg.solve(C, k)
    right = torch.linalg.svd(D).Vh[0]
    assert abs(torch.nn.functional.cosine_similarity(right, u, dim=0)) > 1 - 1e-6   # Δ ∝ δ (C⁻¹k*)ᵀ
    assert (D @ k).norm().item() == pytest.approx(result.per_edit["delta_norm"][0], rel=1e-4)  # Δk* = δ


def block_output_at_subject(handle, layer, req):
    seen = []
    hook = handle.hf_layer(layer).register_forward_hook(lambda mod, args, out: seen.append(out))
    enc = handle.tokenizer(req.filled, return_offsets_mapping=True)
    c1 = req.prompt.index("{}") + len(req.subject)
    last = max(i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < c1)
    try:
        with torch.no_grad():
            handle.hf(torch.tensor([enc["input_ids"]]))
    finally:
        hook.remove()
    return seen[0][0, last].double()


def test_rome_edit_gives_v_star_at_the_subject(tiny_handle, hp):
    """With the bare prompt only (k* = k_bare), the edited block outputs h + δ at the subject:
    Ŵk* = Wk* + δ = v* inside the model (the MLP output moves by exactly δ there)."""
    h = tiny_handle
    result = execute_rome(h, REQS[:1], hp.replace(n_context=0))
    assert result.hparams["context_templates"] == ["{}"]
    before = block_output_at_subject(h, 1, REQS[0])
    applied = apply_edit(h, result)
    after = block_output_at_subject(h, 1, REQS[0])
    revert(h, applied)
    moved = after - before
    assert moved.norm().item() == pytest.approx(result.per_edit["delta_norm"][0], rel=1e-4)
    assert torch.equal(block_output_at_subject(h, 1, REQS[0]), before)


def test_sequential_rome_two_edits_rank_two(tiny_handle, hp):
    result = METHODS["rome"](tiny_handle, REQS, hp.replace(layers=[0, 1, 2]))
    assert result.layers == [1] and any("ROME edits one layer" in n for n in result.notes)
    s = torch.linalg.svdvals(result.deltas[1].double())
    assert s[2] / s[0] < 1e-5 < s[1] / s[0]
    assert list(result.per_edit["subject"]) == ["Miles Davis", "The Eiffel Tower"]


def test_ft_changes_only_its_layer_and_lowers_target_nll(tiny_handle, hp):
    h = tiny_handle
    start = all_params(h)
    fhp = FtHparams(layer=2, lr=5e-3, steps=10)
    result = execute_ft(h, REQS, fhp)
    assert all(torch.equal(v, start[k]) for k, v in all_params(h).items())      # left as found
    assert result.method == "ft" and result.layers == [2] and result.delta_norms[2] > 0
    nll0, _ = target_scores(h, [(r.filled, r.target_new) for r in REQS])
    applied = edit(h, REQS, method="ft", hparams=fhp)
    changed = {k for k, v in all_params(h).items() if not torch.equal(v, start[k])}
    assert changed == {"transformer.h.2.mlp.c_proj.weight"}
    nll1, _ = target_scores(h, [(r.filled, r.target_new) for r in REQS])
    assert (nll1 < nll0 - 0.3).all()
    # FT's own loss is the same per-token mean NLL, computed independently by core.metrics
    assert list(result.per_edit["nll_before"]) == pytest.approx(list(nll0), abs=1e-5)
    assert list(result.per_edit["nll"]) == pytest.approx(list(nll1), abs=1e-5)
    revert(h, applied)
    assert all(torch.equal(v, start[k]) for k, v in all_params(h).items())


def test_ft_early_stopping_and_hparams(tiny_handle, hp):
    tol = 5.25                                   # this random model's NLL plateaus near 5.2
    result = execute_ft(tiny_handle, REQS[:1], FtHparams(layer=0, lr=0.05, steps=25, loss_tol=tol))
    history = result.hparams["loss_history"]
    assert 1 < len(history) < 25 and history[-1] < tol <= min(history[:-1])
    assert result.per_edit["steps"][0] == len(history)
    assert ft_hparams(tiny_handle, hp).layer == 1
    assert ft_hparams(tiny_handle, {"layer": 2}).layer == 2
    with pytest.raises(ValueError, match="lr"):
        FtHparams(layer=0, lr=0)
