"""MEMIT (Meng et al., 2023, Algorithm 1): write many memories into the MLPs of layers R at once.

1. Targets: for every edit, zᵢ = hᵢᴸ + δᵢ at L = max(R) (Eq. 16, `core.targets`, batched).
2. Spread over layers, ascending l ∈ R, on the model as edited so far:
     kᵢˡ  = mean over context prompts of the W_out input at the last subject token   (Eq. 19)
     rᵢˡ  = (zᵢ − hᵢᴸ) / (number of layers of R not yet edited)                       (Eq. 20)
     Δˡ   = R Kᵀ (λC + K Kᵀ)⁻¹,   C = E[kkᵀ] (Eq. 15), solved in float64              (Eq. 14)
     Wˡ  += Δˡ
`execute_memit` returns the Δˡ and leaves the weights exactly as it found them; applying and
reverting are explicit (`core.editing`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd
import torch

from core.covariance import layer_covariances
from core.hparams import MemitHparams, preset_for
from core.requests import EditRequest, validate_requests
from core.targets import (compute_targets, encode, ensure_bare, generate_context_templates, pad_left,
                          place)


@dataclass
class EditResult:
    """What an editing method computed; nothing is applied yet (see `core.editing.apply_edit`).

    deltas: ΔW per edited layer in the stored layout of W_out (Conv1D (d_mlp, d), Linear
    (d, d_mlp)), CPU fp32. per_edit: one row per request (subject, target_new, loss, nll, kl,
    steps, h_norm, delta_norm, stored). residual_norms: mean ‖zᵢ − hᵢᴸ‖ before each layer's update.
    stored_fraction: per layer, the median over edits of the share of that layer's residual its
    ΔW writes on the edit's own key (`stored_fraction`); per_edit["stored"] is its mean over R.
    output_change: per layer, how much ΔW changes the layer's output on ordinary text relative to
    the output itself (`output_change`; methods with key statistics C only).
    """

    method: str
    layers: list[int]
    deltas: dict[int, torch.Tensor]
    delta_norms: dict[int, float]
    relative_norms: dict[int, float]
    per_edit: pd.DataFrame
    timings: dict[str, float]
    hparams: dict
    requests: list[EditRequest]
    residual_norms: dict[int, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stored_fraction: dict[int, float] = field(default_factory=dict)
    output_change: dict[int, float] = field(default_factory=dict)


# ---- Eq. 14 -------------------------------------------------------------------------------------

def solve_delta(K: torch.Tensor, R: torch.Tensor, C: torch.Tensor, lam: float) -> torch.Tensor:
    """Δ = R Kᵀ (λC + K Kᵀ)⁻¹ (Eq. 14) in float64, keys and residuals as rows.

    K: (n, d_mlp) keys, R: (n, d) residuals, C: (d_mlp, d_mlp). Returns Δ (d, d_mlp), the update of
    W (d, d_mlp) with W k = m, in float64. Minimises Σ_old ‖(W+Δ)k − m‖² (weight λ) + Σ_new (Eq. 9).
    """
    adj = eq14_adjoint(K, C, lam)                           # (d_mlp, n) = A⁻¹ Kᵀ
    return R.double().T @ adj.T                             # (d, d_mlp)


def eq14_adjoint(K: torch.Tensor, C: torch.Tensor, lam: float) -> torch.Tensor:
    """A⁻¹ Kᵀ (d_mlp, n), float64, with A = λC + KᵀK (keys as rows): Δ = Rᵀ (A⁻¹Kᵀ)ᵀ (Eq. 14)."""
    K = K.double()
    A = lam * C.to(K.device).double() + K.T @ K             # (d_mlp, d_mlp), symmetric
    return solve_psd(A, K.T)


def solve_psd(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A⁻¹B for the symmetric PSD A of Eq. 14. A unit that never fires, in the corpus or in the
    keys (possible with ReLU MLPs), leaves A singular: then the minimum-norm solution (pseudo-
    inverse), which gives that unit's column of Δ the value 0 — its key entries are 0 anyway."""
    try:
        return torch.linalg.solve(A, B)
    except torch.linalg.LinAlgError:
        return torch.linalg.pinv(A, hermitian=True) @ B


def stored_fraction(K: torch.Tensor, R: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(n,) How much of each residual the update writes on its own key: ⟨Δkᵢ, rᵢ⟩ / ‖rᵢ‖².

    K: (n, d_mlp) keys, R: (n, d) residuals, delta: (d, d_mlp) from `solve_delta`. By Woodbury,
    K Δᵀ = M (I + M)⁻¹ R with M = K C⁻¹ Kᵀ / λ: about 1 while the keys are far apart in the
    metric C⁻¹ relative to λ, falling as a batch fills the layer's key space (M's smallest
    eigenvalues shrink as n approaches d_mlp) — the layer's capacity, seen per edit.
    """
    R = R.double()
    got = K.double() @ delta.double().T                     # (n, d) Δkᵢ
    return (got * R).sum(dim=1) / (R * R).sum(dim=1).clamp_min(1e-30)


def output_change(delta: torch.Tensor, weight: torch.Tensor, C: torch.Tensor, layout: str) -> float:
    """RMS change of the layer's output over the keys C describes, relative to its RMS output:
    √(E‖Δk‖² / E‖Wk‖²) = √(tr(Δ C Δᵀ) / tr(W C Wᵀ)), with E[kkᵀ] = C (Eq. 15).

    delta, weight: ΔW and W_out in the stored layout; C: (d_mlp, d_mlp). This is what the first
    term of Eq. 9 penalises, so it measures damage to old associations where ‖ΔW‖/‖W‖ does not:
    a ΔW that is large only in key directions the corpus never activates (C nearly singular there)
    has a large norm but changes little.
    """
    D = to_layout(delta.detach().double().cpu(), layout)                   # (d, d_mlp)
    W = to_layout(weight.detach().double().cpu(), layout)                  # (d, d_mlp)
    Cd = C.detach().double().cpu()
    num = ((D @ Cd) * D).sum()                                              # tr(Δ C Δᵀ)
    den = ((W @ Cd) * W).sum()                                              # tr(W C Wᵀ)
    return float((num.clamp_min(0) / den.clamp_min(1e-30)).sqrt())


def to_layout(delta: torch.Tensor, layout: str) -> torch.Tensor:
    """Δ (d, d_mlp) in the stored layout of W_out."""
    return delta.T.contiguous() if layout == "conv1d" else delta.contiguous()


# ---- keys and current hidden states (Eq. 19) ----------------------------------------------------

@torch.no_grad()
def keys_and_hidden(handle, requests: list[EditRequest], layer: int, z_layer: int,
                    context_templates: list[str], batch_rows: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """K (n, d_mlp): W_out inputs of `layer` at the last subject token, averaged over the bare
    prompt and, separately, the prefixed prompts, then over those two groups (as the reference);
    h (n, d): output of block `z_layer` at the last subject token of the bare prompt."""
    templates = ensure_bare(context_templates)
    P = len(templates)
    rows, subj = [], []
    for req in requests:
        for c in templates:
            text, c0, c1 = place(c, req.prompt, req.subject)
            enc = encode(handle.tokenizer, text, c0, c1)
            rows.append(enc["ids"]), subj.append(enc["subj"])
    keys, hidden = [], []
    for start in range(0, len(rows), batch_rows):
        ids, mask, pads = pad_left(rows[start:start + batch_rows], handle.tokenizer.pad_token_id, handle.device)
        pos = torch.tensor([s + p for s, p in zip(subj[start:start + batch_rows], pads)], device=handle.device)
        b = torch.arange(len(pos), device=handle.device)
        with handle.lock, handle.model.trace({"input_ids": ids, "attention_mask": mask}) as tracer:
            k = handle.envoy(layer, "mlp_out").input[b, pos].save()             # (B, d_mlp)
            h = handle.layer(z_layer).output[b, pos].save()                     # (B, d)
            tracer.stop()
        keys.append(k.float()), hidden.append(h.float())
    K = torch.cat(keys).view(len(requests), P, -1)                              # (n, P, d_mlp)
    H = torch.cat(hidden).view(len(requests), P, -1)
    K = K[:, 0] if P == 1 else (K[:, 0] + K[:, 1:].mean(1)) / 2                 # Eq. 19
    return K, H[:, 0]


# ---- Algorithm 1 --------------------------------------------------------------------------------

def spread_update(handle, requests, layers: list[int], context_templates: list[str], z: torch.Tensor,
                  covs: dict[int, torch.Tensor], lam: float, progress=None) -> tuple[dict, dict, dict]:
    """Algorithm 1, lines 5-15: ΔW for each layer of R, ascending, on the partly edited model.

    Returns ({layer: ΔW in the stored layout, CPU fp32}, {layer: mean ‖zᵢ − hᵢᴸ‖ before its
    update}, {layer: (n,) `stored_fraction` of that layer's share}). The weights are restored
    bit-exactly before returning, also on any exception.
    """
    L = max(layers)
    deltas, residual_norms, shares = {}, {}, {}
    weights = {layer: handle.mlp_out_weight(layer) for layer in layers}
    originals = {layer: w.detach().clone() for layer, w in weights.items()}
    try:
        with handle.lock:
            for i, layer in enumerate(layers):
                K, h = keys_and_hidden(handle, requests, layer, L, context_templates)   # Eq. 19, (n, d_mlp)
                resid = z - h                                                   # (n, d) zᵢ − hᵢᴸ
                residual_norms[layer] = float(resid.norm(dim=1).mean())
                R = resid / (len(layers) - i)                                   # Eq. 20
                delta = solve_delta(K, R, covs[layer], lam)                     # Eq. 14, (d, d_mlp)
                shares[layer] = stored_fraction(K, R, delta).float().cpu()      # (n,)
                stored = to_layout(delta, handle.spec.layout)
                with torch.no_grad():
                    w0 = originals[layer]
                    weights[layer].copy_(w0 + stored.to(w0.device, w0.dtype))  # W ← W₀ + Δ
                deltas[layer] = stored.float().cpu()
                if progress is not None:
                    progress(i + 1, len(layers), "update")
    finally:
        with handle.lock, torch.no_grad():
            for layer, w in weights.items():
                w.copy_(originals[layer])
    return deltas, residual_norms, shares



def key_statistics(handle, hp, layers, *, cache_dir=None, progress=None) -> dict:
    """C of Eq. 15 for `layers` with the corpus and sample settings of `hp` (cached on disk:
    `core.covariance.layer_covariances`); {layer: CovStats}."""
    return layer_covariances(handle, layers, corpus=hp.corpus, n_samples=hp.n_samples,
                             dtype=hp.stats_dtype, batch_size=hp.stats_batch_size,
                             max_tokens=hp.stats_max_tokens, cache_dir=cache_dir, progress=progress)


def prepare_context_and_stats(handle, hp, layers, timings: dict, notes: list, *,
                              cov_cache_dir=None, progress=None):
    """Shared by MEMIT and ROME: the context templates (generated by the model, seeded, or given)
    and the key statistics C of Eq. 15 for `layers`; fills `timings` and `notes`."""
    t = time.perf_counter()
    templates = ensure_bare(hp.context_templates) if hp.context_templates is not None else \
        generate_context_templates(handle, hp.n_context, hp.context_length, hp.seed)
    timings["context"] = time.perf_counter() - t
    t = time.perf_counter()
    stats = key_statistics(handle, hp, layers, cache_dir=cov_cache_dir, progress=progress)
    timings["covariance"] = time.perf_counter() - t
    if stats[layers[0]].note:
        notes.append(stats[layers[0]].note)
    return templates, stats

def execute_memit(handle, requests: list[EditRequest], hparams: MemitHparams | None = None, *,
                  progress=None, cov_cache_dir=None) -> EditResult:
    """Compute the MEMIT update for `requests` (Algorithm 1).

    Invariant: the model's weights at the end are bit-for-bit those at the start, also when an
    exception escapes (the update is applied layer by layer internally because the keys of layer
    l+1 must be read on the model with layers ≤ l edited, then restored).
    Raises RequestValidationError (every bad request with its row) before touching anything.
    """
    t_start = time.perf_counter()
    hp = hparams if hparams is not None else preset_for(handle)
    layers = handle.check_layers(hp.layers)
    report = validate_requests(list(requests), handle.tokenizer, handle.max_length)
    report.raise_if_bad()
    reqs = report.requests
    notes = list(report.warnings)
    L = max(layers)
    timings = {}

    templates, stats = prepare_context_and_stats(handle, hp, layers, timings, notes,
                                                 cov_cache_dir=cov_cache_dir, progress=progress)

    tz = compute_targets(handle, reqs, L, templates, hp, progress=progress)
    timings["targets"] = tz.seconds

    t = time.perf_counter()
    deltas, residual_norms, shares = spread_update(handle, reqs, layers, templates, tz.z,
                                                   {l: stats[l].C for l in layers}, hp.mom2_weight,
                                                   progress)
    timings["update"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    delta_norms = {l: float(d.norm()) for l, d in deltas.items()}
    relative = {l: delta_norms[l] / max(float(handle.mlp_out_weight(l).float().norm()), 1e-12) for l in layers}
    changes = {l: output_change(deltas[l], handle.mlp_out_weight(l), stats[l].C, handle.spec.layout)
               for l in layers}
    per_edit = pd.DataFrame({
        "case_id": [r.case_id for r in reqs], "subject": [r.subject for r in reqs],
        "prompt": [r.prompt for r in reqs], "target_new": [r.target_new for r in reqs],
        "loss": tz.loss, "nll": tz.nll, "kl": tz.kl, "steps": tz.steps,
        "h_norm": tz.h.norm(dim=1).cpu().tolist(),
        "delta_norm": (tz.z - tz.h).norm(dim=1).cpu().tolist(),
        "stored": torch.stack([shares[l] for l in layers]).mean(dim=0).tolist(),
    })
    hp_dict = hp.to_dict()
    hp_dict["context_templates"] = templates
    return EditResult(method="memit", layers=layers, deltas=deltas, delta_norms=delta_norms,
                      relative_norms=relative, per_edit=per_edit, timings=timings, hparams=hp_dict,
                      requests=reqs, residual_norms=residual_norms, notes=notes,
                      stored_fraction={l: float(shares[l].median()) for l in layers},
                      output_change=changes)
