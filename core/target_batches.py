"""Which edits share a padded batch when the targets z are optimised (`core.targets`).

A z step feeds every row of a batch from the batch's earliest δ position (rows are left-padded),
so mixing edits with different tails after the subject costs padding, while every extra batch
costs a step's fixed overhead. `plan_batches` weighs the two, like the causal trace's chunk plan
(`core.tracing_cache.plan_chunks`): small batches of equal tails where a step's fixed cost is
small (a CPU), the fewest batches where it dominates (a GPU). The batching changes the time, never
z: rows never interact.
"""

from __future__ import annotations

# Fixed cost of one z step (nnsight setup, the backward's bookkeeping, Adam on δ) in units of one
# row × one fed token through the blocks after L, forward and backward. Measured on the shipped
# demo model (2 CPU threads): a step of one edit (12 rows × ≈ 8 tokens) takes 23 ms, of 16 edits
# 186 ms → ≈ 12 ms fixed ≈ 110 units of its blocks (4·d² + 2·d·d_mlp MACs each), written here in
# the trace plan's units (`overhead_scale`: 1/3 on that model, × ACCELERATOR_OVERHEAD off the CPU).
STEP_COST = 330.0


def fill_in_order(groups: list[int], sizes: list[int], cap: int) -> list[list[int]]:
    """`groups` in order into batches of at most `cap` edits (sizes[g] edits each; a group larger
    than `cap` is a batch alone)."""
    out, cur, edits = [], [], 0
    for g in groups:
        if cur and edits + sizes[g] > cap:
            out.append(cur)
            cur, edits = [], 0
        cur.append(g)
        edits += sizes[g]
    return out + ([cur] if cur else [])


def plan_batches(tails: list[int], sizes: list[int], prompts: int, cap: int, step_cost: float) -> list[list[int]]:
    """Key groups → batches of at most `cap` edits (a group larger than `cap` is one batch alone).

    Rows are left-padded and a step feeds every row of a batch from the batch's earliest δ
    position, so a step costs about step_cost + rows × (longest tail + 1), with tails[g] the
    tokens after the subject (prompt rest + target) of group g, sizes[g] its edits and
    (sizes[g] · prompts + 1) its rows (+1: the KL prompt). Groups are sorted by tail and cut into
    contiguous runs by dynamic programming over the distinct tail lengths, a run holding more than
    `cap` edits being filled in order into several batches: many small batches of equal tails
    where a step's fixed cost is small (a CPU), few large ones where it dominates (a GPU).
    """
    order = sorted(range(len(tails)), key=lambda g: (tails[g], g))
    values = sorted(set(tails))

    def cost(batches: list[list[int]]) -> float:
        return sum(step_cost + sum(sizes[g] * prompts + 1 for g in b) * (max(tails[g] for g in b) + 1)
                   for b in batches)

    by_value = {v: [g for g in order if tails[g] == v] for v in values}
    best: list[tuple[float, list[list[int]]]] = [(0.0, [])]      # best[k]: the first k tail values
    for k in range(1, len(values) + 1):
        options = []
        for j in range(k):
            run = fill_in_order([g for v in values[j:k] for g in by_value[v]], sizes, cap)
            options.append((best[j][0] + cost(run), best[j][1] + run))
        best.append(min(options, key=lambda o: o[0]))
    return best[-1][1]
