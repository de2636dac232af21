"""ROME (Meng et al., 2022) as the MEMIT paper's sequential baseline: one rank-one edit of ONE
MLP layer per fact, applied one fact after another (MEMIT paper §5.1, Appendix B.3).

For each request, on the model as edited by the requests before it:
    k*  = mean over context prompts of the W_out input at the last subject token (same keys as
          MEMIT, Eq. 19; `core.memit.keys_and_hidden`)
    δ   = z − h at the edit layer l (Eq. 16, `core.targets.compute_targets` with L = l): the
          change of the MLP output at the subject that makes the model say the new object
    v*  = W k* + δ
    Ŵ   = W + Λ (C⁻¹k*)ᵀ,   Λ = (v* − W k*) / ((C⁻¹k*)ᵀ k*) = δ / (k*ᵀ C⁻¹ k*)        (ROME Eq. 2)
so Ŵ k* = v* exactly and every other key moves as little as possible in the C-metric
(C = E[kkᵀ] from `core.covariance`). `execute_rome` returns the sum of the rank-one updates
and leaves the model exactly as it found it, like `execute_memit`.
"""

from __future__ import annotations

import time

import pandas as pd
import torch

from core.hparams import MemitHparams, preset_for
from core.memit import EditResult, keys_and_hidden, output_change, prepare_context_and_stats, to_layout
from core.requests import EditRequest, validate_requests
from core.targets import compute_targets


def rome_layer(layers: list[int]) -> int:
    """The one layer ROME edits when given MEMIT's range R: its middle (GPT-J: R = 3..8 → 5,
    the layer the reference ROME uses)."""
    layers = sorted(layers)
    return layers[(len(layers) - 1) // 2]


def rome_hparams(handle, layer: int | None = None, base: MemitHparams | None = None) -> MemitHparams:
    """MEMIT's hyperparameters for this model (or `base`) restricted to one layer."""
    hp = base if base is not None else preset_for(handle)
    return hp.replace(layers=[int(layer) if layer is not None else rome_layer(hp.layers)])


def rank_one_update(k: torch.Tensor, delta: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Λ (C⁻¹k)ᵀ with Λ = δ / (kᵀ C⁻¹ k), in float64. k: (d_mlp,), δ: (d,), C: (d_mlp, d_mlp).

    Returns Δ (d, d_mlp) with Δ k = δ (so (W + Δ) k* = v*)."""
    k, delta, C = k.double(), delta.double(), C.to(k.device).double()
    u = torch.linalg.solve(C, k)                               # C⁻¹ k*, (d_mlp,)
    return torch.outer(delta / (u @ k), u)                     # (d, d_mlp), rank one


def execute_rome(handle, requests: list[EditRequest], hparams: MemitHparams | None = None, *,
                 progress=None, cov_cache_dir=None) -> EditResult:
    """Sequential ROME: rank-one edits of one layer, one request after another.

    `hparams`: MEMIT hyperparameters; with several layers the middle one is edited
    (`rome_layer`); λ (mom2_weight) is not used. Invariant: the weights at the end are bit for
    bit those at the start, also when an exception escapes.
    """
    t_start = time.perf_counter()
    hp = rome_hparams(handle, base=hparams)
    layer = handle.check_layers(hp.layers)[0]
    report = validate_requests(list(requests), handle.tokenizer, handle.max_length)
    report.raise_if_bad()
    reqs, notes = report.requests, list(report.warnings)
    if hparams is not None and len(hparams.layers) > 1:
        notes.append(f"ROME edits one layer: layer {layer}, the middle of R = {hparams.layers}")
    timings = {}

    templates, stats = prepare_context_and_stats(handle, hp, [layer], timings, notes,
                                                 cov_cache_dir=cov_cache_dir)
    C = stats[layer].C

    weight = handle.mlp_out_weight(layer)
    original = weight.detach().clone()
    total = torch.zeros(tuple(weight.shape), dtype=torch.float64)      # Σ rank-one updates, stored layout
    rows, t_targets, t_update = [], 0.0, 0.0
    try:
        with handle.lock:
            for i, req in enumerate(reqs):
                tz = compute_targets(handle, [req], layer, templates, hp, batch_size=1)   # on the edited model
                t_targets += tz.seconds
                t = time.perf_counter()
                K, h = keys_and_hidden(handle, [req], layer, layer, templates)           # k* (1, d_mlp)
                delta = (tz.z - h)[0]                                                   # δ (d,)
                upd = rank_one_update(K[0], delta, C)                                   # (d, d_mlp)
                stored = to_layout(upd, handle.spec.layout)
                total += stored.cpu()
                with torch.no_grad():
                    weight.add_(stored.to(weight.device, weight.dtype))                 # sequential
                t_update += time.perf_counter() - t
                rows.append({"case_id": req.case_id, "subject": req.subject, "prompt": req.prompt,
                             "target_new": req.target_new, "loss": tz.loss[0], "nll": tz.nll[0],
                             "kl": tz.kl[0], "steps": tz.steps[0], "h_norm": float(h[0].norm()),
                             "delta_norm": float(delta.norm())})
                if progress is not None:
                    progress(i + 1, len(reqs), "rome")
    finally:
        with handle.lock, torch.no_grad():
            weight.copy_(original)
    timings.update(targets=t_targets, update=t_update, total=time.perf_counter() - t_start)

    d = total.float()
    norm = float(d.norm())
    hp_dict = hp.to_dict()
    hp_dict["context_templates"] = templates
    return EditResult(method="rome", layers=[layer], deltas={layer: d}, delta_norms={layer: norm},
                      relative_norms={layer: norm / max(float(original.float().norm()), 1e-12)},
                      per_edit=pd.DataFrame(rows), timings=timings, hparams=hp_dict, requests=reqs,
                      notes=notes,
                      output_change={layer: output_change(d, original, C, handle.spec.layout)})
