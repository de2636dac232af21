"""How many edits fit in a layer, from the keys alone (no targets z, no edit).

Eq. 14 writes Δ = R Kᵀ(λC + KᵀK)⁻¹ (keys K (n, d_mlp) and residuals R (n, d) as rows). On the
batch's own keys it gives

    K Δᵀ = K (λC + KᵀK)⁻¹ Kᵀ R = M (I + M)⁻¹ R,        M = K C⁻¹ Kᵀ / λ   (n, n; Woodbury)

and on a key k′ outside the batch Δk′ = Rᵀ a(k′) with a(k′) = K (λC + KᵀK)⁻¹ k′ (n,). If the
residuals were orthonormal (independent edits), edit i would keep exactly
    stored_i = [M (I + M)⁻¹]_ii       of its residual (`core.memit.stored_fraction` measures the
                                       same share with the real residuals after an edit), and
    leak(k′) = ‖a(k′)‖                would land on k′, in units of one residual.
Both need one forward per prompt to read the keys and the layer's cached C, so they can be read
for n = 100 … 10,000 in seconds, before any editing: stored_i near 1 while the keys are far apart
in the metric C⁻¹; as n approaches the layer's key dimension M's smallest eigenvalues fall
towards 0 and less is stored while more leaks. Keys are read on the unedited model (for layers
of R above the first, MEMIT reads them on the partly edited model).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from core.memit import eq14_adjoint, keys_and_hidden, prepare_context_and_stats


@dataclass
class CapacityRow:
    """One (layer, n) point: shares of an orthonormal residual kept / leaked, and M's spectrum."""

    layer: int
    n: int
    lam: float
    stored_median: float        # median over the batch of [M (I + M)⁻¹]_ii
    stored_p10: float           # its 10th percentile (the worst-off edits)
    eig_min: float              # smallest eigenvalue of M = K C⁻¹ Kᵀ / λ
    eig_median: float
    leak_median: float | None   # median ‖a(k′)‖ over keys outside the batch (None without them)
    leak_p90: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def crowded(rows: list[CapacityRow], limit: float = 0.8) -> CapacityRow | None:
    """The most crowded (layer, n) point whose median edit would keep less than `limit`, if any."""
    low = [r for r in rows if r.stored_median < limit]
    return min(low, key=lambda r: r.stored_median) if low else None


def key_capacity(K: torch.Tensor, C: torch.Tensor, lam: float,
                 K_out: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Closed-form capacity of one layer for the keys K (n, d_mlp), float64.

    Returns {"stored": (n,) diag of K A⁻¹ Kᵀ with A = λC + KᵀK, "eig": (n,) eigenvalues of
    M = K C⁻¹ Kᵀ / λ (ascending), "leak": (m,) ‖K A⁻¹ k′‖ for the rows k′ of K_out (if given)}.
    """
    K = K.double()
    AiKt = eq14_adjoint(K, C, lam)                              # A⁻¹ Kᵀ (d_mlp, n)
    S = K @ AiKt                                                # K A⁻¹ Kᵀ = M (I+M)⁻¹ (n, n)
    S = (S + S.T) / 2
    # eig(M) = s / (1 − s) for the eigenvalues s ∈ [0, 1) of S: no C⁻¹, which is ill-conditioned
    # where units of the layer are (nearly) never active in the corpus
    s = torch.linalg.eigvalsh(S).clamp(0.0, 1.0 - 1e-12)
    out = {"stored": torch.diagonal(S).clone(), "eig": s / (1.0 - s)}
    if K_out is not None and len(K_out):
        out["leak"] = (K_out.double() @ AiKt).norm(dim=1)       # ‖K A⁻¹ k′‖ (A symmetric)
    return out


def capacity_curve(handle, requests, hp, sizes: list[int], *, outside=None,
                   progress=None) -> list[CapacityRow]:
    """`key_capacity` for the first n requests, for each n in `sizes` and each layer of hp.layers
    at λ = hp.mom2_weight, with the context prompts and key statistics an edit with `hp` would use
    (`core.memit.prepare_context_and_stats`: C from the disk cache when it is there).

    requests: at least max(sizes) edit requests; outside: requests whose subjects are not edited
    (their keys measure the leak). Keys are those MEMIT uses (`core.memit.keys_and_hidden`:
    last subject token, averaged over the context prompts), read once for max(sizes).
    """
    layers = handle.check_layers(hp.layers)
    sizes = sorted(set(int(n) for n in sizes))
    requests = list(requests)[:sizes[-1]]
    outside = list(outside or [])
    templates, stats = prepare_context_and_stats(handle, hp, layers, {}, [], progress=progress)
    rows = []
    for j, layer in enumerate(layers):
        K_all, _ = keys_and_hidden(handle, requests, layer, layer, templates)
        K_out = keys_and_hidden(handle, outside, layer, layer, templates)[0] if outside else None
        for n in sizes:
            cap = key_capacity(K_all[:n], stats[layer].C, hp.mom2_weight, K_out)
            stored, eig, leak = cap["stored"], cap["eig"], cap.get("leak")
            rows.append(CapacityRow(
                layer=layer, n=n, lam=float(hp.mom2_weight), stored_median=float(stored.median()),
                stored_p10=float(stored.quantile(0.1)), eig_min=float(eig[0]),
                eig_median=float(eig.median()),
                leak_median=None if leak is None else float(leak.median()),
                leak_p90=None if leak is None else float(leak.quantile(0.9))))
        if progress is not None:
            progress(j + 1, len(layers), "capacity")
    return rows
