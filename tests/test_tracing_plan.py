"""What the batched grid does not compute — skipped blocks, cached prefixes, filled and shared
cells, the chunk plan and its cost model — each against the brute-force loop or a plain count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.arch import get_path
from core.tracing import KINDS, TraceSettings, prepare_trace, run_grid
from core.tracing_cache import cache_kv, forward_cost, plan_chunks, plan_grid
from core.tracing_severed import run_severed
from tests.trace_helpers import STRONG, SUBJECT, sharpen, strong_prep


@pytest.fixture
def prep(tiny_handle):
    return strong_prep(tiny_handle)


def test_skip_depth():
    """Blocks below the first patched layer are shared with the corrupted run; a block whose
    only patch is its output can be skipped too (the patch is written into the copy)."""
    from core.tracing_batch import Patch, skip_depth

    def p(layer, comp):
        z = torch.zeros(1, dtype=torch.long)
        return Patch(layer, comp, z, z, torch.zeros(1, 4))

    assert skip_depth([]) == -1
    assert skip_depth([p(3, "hidden"), p(5, "mlp")]) == 3
    assert skip_depth([p(3, "hidden"), p(3, "mlp")]) == 2
    assert skip_depth([p(0, "attn")]) == -1


# ---- shortcuts of the batched grid, each against the brute-force loop -----------------------------

def test_filled_cells_equal_the_loop(prep):
    """Cells filled without a forward hold what one full forward per cell computes."""
    T, L, s0 = prep.n_tokens, prep.handle.n_layers, prep.span.start
    loop = run_grid(prep, "hidden", batched=False)
    batched = run_grid(prep, "hidden")
    # Before the subject: the corrupted probability.
    np.testing.assert_allclose(loop.scores[:s0], prep.corrupted_prob, atol=1e-6, rtol=0)
    # Last layer, earlier tokens: nothing reads the restored state.
    np.testing.assert_allclose(loop.scores[:T - 1, L - 1], prep.corrupted_prob, atol=1e-6, rtol=0)
    # Last layer, last token: the clean final state gives the clean prediction.
    assert loop.scores[T - 1, L - 1] == pytest.approx(prep.clean_prob, abs=1e-6)
    assert batched.skipped_cells == s0 * L + (T - 1 - s0) + 1
    plan = plan_grid(prep, "hidden")
    assert plan.skipped == batched.skipped_cells and len(plan.runs) == T * L - plan.skipped
    assert (plan.where[:s0] < 0).all() and (plan.where[:, L - 1] < 0).all()


def test_shared_restorations_equal_the_loop(tiny_handle):
    """Windows clipped at both ends give one restoration for several layers: run once, copied."""
    wide = TraceSettings(noise=20.0, samples=2, window=6, seed=7)     # 3 layers: every window = all
    prep = prepare_trace(sharpen(tiny_handle), "The trumpet of Miles Davis is", SUBJECT, settings=wide)
    T, L, s0 = prep.n_tokens, prep.handle.n_layers, prep.span.start
    plan = plan_grid(prep, "mlp")
    assert len(plan.runs) == T - s0              # one restoration per token
    assert plan.shared == (T - s0) * (L - 1) and plan.skipped == s0 * L
    batched, loop = run_grid(prep, "mlp"), run_grid(prep, "mlp", batched=False)
    assert batched.shared_cells == plan.shared
    np.testing.assert_allclose(batched.scores, loop.scores, atol=1e-6, rtol=0)
    for layer in range(1, L):    # the loop computed the copies separately, and got the same
        np.testing.assert_allclose(loop.scores[:, layer], loop.scores[:, 0], atol=1e-6, rtol=0)


def test_cached_prefix_feeds_fewer_tokens(prep, monkeypatch):
    """With the corrupted run's keys/values, a forward restoring token t feeds tokens t … T−1 only."""
    import core.tracing_batch as tb

    fed = []
    original = tb.corrupted_forward
    monkeypatch.setattr(tb, "corrupted_forward", lambda *a, **k: fed.append(k["prefix"]) or original(*a, **k))
    T = prep.n_tokens
    sev = run_severed(prep)
    assert fed and set(fed) == {prep.span.last}     # the severed cells all restore token S
    fed.clear()
    small = TraceSettings(**{**STRONG.__dict__, "memory_mb": 0.05})  # a few cells per forward
    prep_small = prepare_trace(prep.handle, prep.prompt, prep.subject, settings=small)
    grid = run_grid(prep_small, "hidden")
    assert min(fed) >= prep.span.start and prep.span.start < max(fed) < T
    np.testing.assert_allclose(grid.scores[prep.span.last], sev.normal, atol=1e-6)


def test_block_evals_count_what_the_blocks_ran(prep):
    """`block_evals` (rows × tokens × blocks) equals what plain forward hooks see: every block
    that runs calls its MLP once (a block skipped by nnsight does not), on (rows, tokens, d)."""
    handle = prep.handle
    seen = []
    mlps = [get_path(get_path(handle.hf, handle.spec.layers)[i], handle.spec.mlp)
            for i in range(handle.n_layers)]
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0] * args[0].shape[1]))
             for m in mlps]
    small = TraceSettings(**{**STRONG.__dict__, "memory_mb": 0.05})
    prep_small = prepare_trace(handle, prep.prompt, prep.subject, settings=small)
    try:
        for kind in KINDS:
            for kw in ({}, {"batched": False}, {"reuse_prefix": False}, {"prune_positions": False}):
                seen.clear()
                grid = run_grid(prep_small, kind, **kw)
                assert grid.block_evals == sum(seen) > 0, (kind, kw)
                assert grid.forwards > 0
            loop = run_grid(prep_small, kind, batched=False)
            T, L, S = prep.n_tokens, handle.n_layers, STRONG.samples
            assert loop.forwards == T * L and loop.block_evals == T * L * S * T * L
            assert run_grid(prep_small, kind).block_evals < loop.block_evals / 2
    finally:
        for h in hooks:
            h.remove()


def test_cache_kv_refuses_partial_caches():
    from transformers import DynamicCache

    assert cache_kv(DynamicCache(), 5) is None                     # nothing recorded
    k = torch.zeros(2, 4, 5, 8)
    assert cache_kv(DynamicCache(ddp_cache_data=[(k, k)]), 5) is not None
    assert cache_kv(DynamicCache(ddp_cache_data=[(k, k)]), 6) is None   # not every token held


def test_plan_chunks_partitions_and_beats_fixed_grouping():
    tokens = [t for t in range(6) for _ in range(8)]
    blocks = [b for _ in range(6) for b in range(8)]
    plan = plan_chunks(tokens, blocks, 6, 8, 10, max_cells=16)
    assert sorted(i for c in plan for i in c) == list(range(48))
    assert all(1 <= len(c) <= 16 for c in plan)

    def cost(chunks):
        return sum(forward_cost(len(c), 10, 6, 8, min(tokens[i] for i in c), min(blocks[i] for i in c))
                   for c in chunks)

    by_token = [[i for i in range(48) if tokens[i] == t] for t in range(6)]
    by_block = [[i for i in range(48) if blocks[i] == b] for b in range(8)]
    singles = [[i] for i in range(48)]
    assert cost(plan) <= min(cost(by_token), cost(by_block), cost(singles))
    assert plan_chunks([0, 0, 0], [0, 0, 0], 4, 2, 1, max_cells=1) == [[0], [1], [2]]


def test_cheaper_fixed_costs_plan_more_forwards_and_less_work():
    from core.tracing_cache import overhead_scale

    assert overhead_scale(128, 512, "cpu") == pytest.approx(1.0)        # the fitted shape
    assert overhead_scale(128, 2048, "cpu") == pytest.approx(1 / 3)     # 4·d² + 2·d·d_mlp MACs
    assert overhead_scale(128, 2048, "cuda") == pytest.approx(1000 / 3)  # fixed costs ≫ work on a GPU
    tokens = [t for t in range(6) for _ in range(8)]
    blocks = [b for _ in range(6) for b in range(8)]

    def work(chunks):   # rows × tokens × blocks, as run_cells counts it
        return sum(len(c) * 10 * (6 - min(tokens[i] for i in c)) * (8 - min(blocks[i] for i in c))
                   for c in chunks)

    gpu = plan_chunks(tokens, blocks, 6, 8, 10, max_cells=48, overhead=overhead_scale(128, 2048, "cuda"))
    assert gpu == [list(range(48))]                                      # the whole grid, one forward
    assert plan_chunks(tokens, blocks, 6, 8, 10, max_cells=20,
                       overhead=overhead_scale(128, 2048, "cuda")) == [list(range(20)), list(range(20, 40)),
                                                                       list(range(40, 48))]   # memory cap
    plans = [plan_chunks(tokens, blocks, 6, 8, 10, max_cells=48, overhead=o) for o in (1.0, 1 / 3, 0.0)]
    for plan in plans:
        assert sorted(i for c in plan for i in c) == list(range(48))
    assert len(plans[0]) < len(plans[1]) < len(plans[2]) == 48           # no fixed cost: one per cell
    assert work(plans[0]) > work(plans[1]) > work(plans[2])
    assert work(plans[2]) == sum(10 * (6 - t) * (8 - b) for t, b in zip(tokens, blocks))
