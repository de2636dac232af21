"""How big an edit is: `core.memit.output_change` against keys sampled one by one, and the
warnings the app and CLI build on it (`workbench.edit_flow.size_warning` / `size_note`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from core.memit import output_change, to_layout
from workbench.edit_flow import size_note, size_warning


@pytest.mark.parametrize("layout", ["linear", "conv1d"])
def test_output_change_is_the_rms_change_over_sampled_keys(layout):
    g = torch.Generator().manual_seed(0)
    d, d_mlp, n = 6, 10, 4000
    X = torch.randn(n, d_mlp, generator=g, dtype=torch.float64) * torch.linspace(0.1, 2.0, d_mlp, dtype=torch.float64)
    C = X.T @ X / n                                                     # E[kkᵀ] of these keys
    W = torch.randn(d, d_mlp, generator=g, dtype=torch.float64)         # (d, d_mlp)
    D = 0.1 * torch.randn(d, d_mlp, generator=g, dtype=torch.float64)
    # brute force: mean over the keys, one at a time, of ‖Δk‖² and ‖Wk‖²
    num = sum(float((D @ X[i]).square().sum()) for i in range(n)) / n
    den = sum(float((W @ X[i]).square().sum()) for i in range(n)) / n
    got = output_change(to_layout(D, layout), to_layout(W, layout), C.float(), layout)
    assert got == pytest.approx((num / den) ** 0.5, rel=1e-5)


def test_a_large_update_where_the_keys_never_go_changes_nothing():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(500, 8, generator=g, dtype=torch.float64)
    X[:, 5:] = 0.0                                                      # units 5-7 never fire
    C = X.T @ X / 500
    W = torch.randn(4, 8, generator=g, dtype=torch.float64)
    D = torch.zeros(4, 8, dtype=torch.float64)
    D[:, 5:] = 1e6                                                      # huge, but only there
    assert float(D.norm() / W.norm()) > 1e5
    assert output_change(D, W, C, "linear") == 0.0


def _result(relative, change):
    return SimpleNamespace(relative_norms=relative, output_change=change)


def test_size_warning_judges_by_output_change_and_explains_big_norms():
    # layer 1 changes its corpus output by 30 % → warned, named; layer 0's 5 × ‖W‖ is harmless
    r = _result({0: 5.0, 1: 0.5}, {0: 0.01, 1: 0.3})
    assert "Layer 1" in size_warning(r) and "30 %" in size_warning(r)
    note = size_note(r)
    assert "layer 0" in note and "5 × ‖W‖" in note and "1.0 %" in note
    # the demo happy path: ‖ΔW‖ 1.37 × ‖W‖ but 1.6 % output change → no warning, a note
    r = _result({0: 1.37}, {0: 0.016})
    assert size_warning(r) is None and "1.37 × ‖W‖" in size_note(r)
    # small in both senses: nothing to say
    assert size_warning(_result({0: 0.2}, {0: 0.01})) is None and size_note(_result({0: 0.2}, {0: 0.01})) is None
    # no key statistics (FT-W): the norm rule
    assert "250 % of its own norm" in size_warning(_result({0: 2.5}, {}))
    assert size_warning(_result({0: 0.9}, {})) is None and size_note(_result({0: 2.5}, {})) is None
