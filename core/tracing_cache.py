"""What a batched tracing forward need not compute: cached prefixes and the chunk plan.

Causal attention makes restorations local in both directions of the grid. A restoration whose
patches all sit at tokens ≥ t₀ and in blocks ≥ f leaves
    every block < f at every token, and every block at tokens < t₀,
exactly as in the plain corrupted run (noise is on the subject embeddings only, and a position
reads only positions ≤ itself). So a forward for such rows
  * starts from the corrupted run's block output f−1 (nnsight `.skip`, `core.tracing_batch`), and
  * feeds only tokens t₀ … T−1, with the corrupted run's keys and values of tokens < t₀ as a
    key–value cache (HF `DynamicCache`) and position ids t₀ … T−1.
Work per restoration ∝ (T − t₀) · (blocks run) instead of T · L.

Chunks mix restorations (one forward each), so a chunk runs from the smallest t₀ and the smallest
f of its cells; `plan_chunks` trades that waste against the fixed cost of one more forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

# Cost model of one forward, in units of "one row × one token × one block".
# Fitted on the first 8-layer demo model (d = 128, d_mlp = 512: 12·d² MACs per unit) on one CPU
# thread: a forward's fixed cost (nnsight setup, masks) ≈ 300 units, each block run adds ≈ 15
# units of per-module overhead, each row ≈ 5 (embedding, unembedding). These are fixed times, so
# on a CPU they are fewer units of a model whose blocks cost more MACs (`overhead_scale`; on the
# shipped d_mlp 2,048 model ≈ 1/3: its default-prompt grids then run 13 forwards each instead of
# 7, with 12 % less work and ≈ 7 % less time). Only the plan depends on these; every plan gives
# the same numbers.
FORWARD_COST = 300.0
BLOCK_COST = 15.0
ROW_COST = 5.0
FITTED_BLOCK_MACS = 12 * 128 ** 2
# On an accelerator the fixed costs stay what they are on the CPU — Python, nnsight's setup, kernel
# launches: wall time — while a unit of work runs orders of magnitude faster (a GPU streams a
# forward of a few thousand token-rows of a small model in about the time of its launches). In
# units of work they are then ~10³ times larger: the plan runs each grid in as few forwards as the
# memory budget allows. An estimate, not fitted on a GPU; `bench trace` reports forwards and times
# per path, which is what would fit it.
ACCELERATOR_OVERHEAD = 1000.0


def overhead_scale(d_model: int, d_mlp: int, device_type: str) -> float:
    """The fixed costs above in units of this model's block evaluation: the fitted block's MACs
    over this one's (attention projections 4·d², MLP 2·d·d_mlp) on a CPU, where a forward is
    compute-bound; on any other device `ACCELERATOR_OVERHEAD` times that."""
    scale = FITTED_BLOCK_MACS / float(4 * d_model ** 2 + 2 * d_model * d_mlp)
    return scale if device_type == "cpu" else scale * ACCELERATOR_OVERHEAD


def cache_kv(cache, n_tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Per-block (keys, values) of a filled `DynamicCache`, each (rows, heads, T, head_dim);
    None unless every layer holds all `n_tokens` positions and attends to all of them (a sliding
    window shorter than the prompt would not): prefix reuse is then off and forwards feed
    every token."""
    layers = getattr(cache, "layers", None)
    if not layers:
        return None
    out = []
    for layer in layers:
        full = type(layer) is DynamicLayer or (
            type(layer) is DynamicSlidingWindowLayer and n_tokens < layer.sliding_window)
        if not full or layer.keys is None or layer.keys.shape[-2] != n_tokens:
            return None
        out.append((layer.keys, layer.values))
    return out


def prefix_cache(handle, kv: list[tuple[torch.Tensor, torch.Tensor]], prefix: int,
                 repeats: int) -> DynamicCache:
    """A cache holding tokens 0 … prefix−1 of the corrupted run for `repeats` · S rows
    (row r ← noise sample r mod S, as `noise.repeat` lays them out)."""
    data = [(k[:, :, :prefix].repeat(repeats, 1, 1, 1), v[:, :, :prefix].repeat(repeats, 1, 1, 1))
            for k, v in kv]
    return DynamicCache(ddp_cache_data=data, config=handle.config)


def forward_cost(n_cells: int, rows_per_cell: int, n_tokens: int, n_layers: int,
                 first_token: int, first_block: int, overhead: float = 1.0) -> float:
    """Estimated cost of one forward of `n_cells` restorations fed tokens first_token … T−1 and
    running blocks first_block … L−1 (fixed costs × `overhead`, see `overhead_scale`)."""
    blocks, rows = n_layers - first_block, n_cells * rows_per_cell
    return (overhead * (FORWARD_COST + blocks * BLOCK_COST)
            + rows * (overhead * ROW_COST + (n_tokens - first_token) * blocks))


def plan_chunks(tokens: list[int], blocks: list[int], n_tokens: int, n_layers: int,
                rows_per_cell: int, max_cells: int, overhead: float = 1.0) -> list[list[int]]:
    """Group cells into forwards of at most `max_cells` cells, keeping `forward_cost` low.

    tokens[i]: the first token cell i must feed (0 without a cache); blocks[i]: the first block
    it must run. A forward is a corner (t, b): it feeds tokens ≥ t to blocks ≥ b and can take
    any cell with tokens[i] ≥ t and blocks[i] ≥ b. Starting from the one corner that takes all
    cells, corners are added (greedily, the largest saving first) and dropped while that lowers
    the total; each cell goes to its cheapest corner, and corners holding more than `max_cells`
    cells run as several forwards.
    """
    n = len(tokens)
    if n == 0:
        return []
    tok, blk = np.asarray(tokens), np.asarray(blocks)
    corners = [(t, b) for t in np.unique(tok) for b in np.unique(blk)]
    ct = np.array([c[0] for c in corners])
    cb = np.array([c[1] for c in corners])
    per_cell = rows_per_cell * (overhead * ROW_COST + (n_tokens - ct) * (n_layers - cb)).astype(float)
    fits = (tok[:, None] >= ct[None]) & (blk[:, None] >= cb[None])             # (cells, corners)
    cost = np.where(fits, per_cell[None], np.inf)
    fixed = overhead * (FORWARD_COST + BLOCK_COST * (n_layers - cb))

    def total(open_: list[int]) -> float:
        return float(cost[:, open_].min(axis=1).sum() + fixed[open_].sum())

    open_ = [int(np.argmin(np.where(fits.all(axis=0), fixed + cost.sum(axis=0), np.inf)))]
    best = total(open_)
    for _ in range(2 * len(corners)):
        moves = [open_ + [k] for k in range(len(corners)) if k not in open_]
        moves += [[k for k in open_ if k != d] for d in open_ if len(open_) > 1]
        scored = [(total(m), m) for m in moves]
        if not scored:
            break
        c, m = min(scored, key=lambda x: x[0])
        if c >= best - 1e-9:
            break
        best, open_ = c, m
    assign = np.asarray(open_)[cost[:, open_].argmin(axis=1)]
    plan = []
    for k in open_:
        cells = [int(i) for i in np.flatnonzero(assign == k)]
        plan += [cells[a:a + max_cells] for a in range(0, len(cells), max(1, max_cells))]
    return plan


# ---- which cells of a grid run ----------------------------------------------------------------

def window_layers(layer: int, window: int, n_layers: int) -> range:
    """Layers restored together around `layer`: [l − ⌊w/2⌋, l + ⌈w/2⌉) clipped to the model
    (the reference implementation's window; w = 10 → l−5 … l+4)."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def restored_layers(kind: str, token: int, layer: int, window: int, n_tokens: int,
                    n_layers: int) -> tuple[int, ...]:
    """The layers cell (token, layer) restores, less those no later computation reads: at a token
    before the last, the last block's outputs feed only that token's own (unread) prediction."""
    layers = (layer,) if kind == "hidden" else tuple(window_layers(layer, window, n_layers))
    if token < n_tokens - 1:
        layers = tuple(j for j in layers if j < n_layers - 1)
    return layers


@dataclass
class GridPlan:
    """Which cells of a grid run and which are known without a forward.

    runs: distinct restorations (token, layers) to compute; where[t, l]: the index in `runs`
    of cell (t, l), or −1 for a cell filled with `fill[t, l]`; skipped: cells filled without a
    forward; shared: cells that copy another cell's identical restoration.
    """

    runs: list
    where: np.ndarray
    fill: np.ndarray
    skipped: int
    shared: int


def plan_grid(prep, kind: str, shortcuts: bool = True) -> GridPlan:
    """The restorations a grid needs. Without shortcuts every cell runs (the reference loop).

    With them, cells provably equal to a known probability are filled:
      token before the subject   → corrupted (it cannot see the noise: causal attention);
      nothing read restored      → corrupted (see `restored_layers`);
      hidden at (T−1, L−1)       → clean (the restored state is the clean run's last state);
    and cells restoring the same (token, layers) — windows clipped at the ends — run once.
    """
    T, L, w = prep.n_tokens, prep.handle.n_layers, prep.settings.window
    where = np.full((T, L), -1, dtype=np.int64)
    fill = np.full((T, L), prep.corrupted_prob, dtype=np.float64)
    runs, index, shared = [], {}, 0
    for t in range(T):
        for layer in range(L):
            if not shortcuts:
                targets = (layer,) if kind == "hidden" else tuple(window_layers(layer, w, L))
                where[t, layer] = len(runs)
                runs.append((t, targets))
                continue
            layers = restored_layers(kind, t, layer, w, T, L)
            if t < prep.span.start or not layers:
                continue
            if kind == "hidden" and layers == (L - 1,):     # t = T−1: the clean final state
                fill[t, layer] = prep.clean_prob
                continue
            key = (t, layers)
            shared += key in index
            where[t, layer] = index.setdefault(key, len(runs))
            if where[t, layer] == len(runs):
                runs.append(key)
    skipped = int((where < 0).sum())
    return GridPlan(runs=runs, where=where, fill=fill, skipped=skipped, shared=shared)
