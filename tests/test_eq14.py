"""Eq. 14 in closed form: against a brute-force least-squares solve of Eq. 9, the stored share of
each edit against the Woodbury form, the key-only capacity against real updates, and a unit that
never fires."""

from __future__ import annotations

import torch

from core.memit import solve_delta, stored_fraction


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
