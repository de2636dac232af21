"""The batched engine behind causal tracing: corrupted forwards with many restorations per forward.

One prompt, `S` noisy copies. A forward over `n · S` rows runs `n` restorations ("cells") at once:
rows `c·S … c·S+S-1` belong to cell `c`, and row `c·S + s` carries noise sample `s`, so every
restoration sees the same `S` noise draws (Meng et al., 2022, `trace_with_patch`: row 0 clean,
rows 1… corrupted; here the clean states come from a separate clean run, so every row of a chunk
is a corrupted row). A restoration is a list of `Patch`es: "set the output of component C of
block l at (rows, tokens) to these values". Patches are applied in execution order (block 0 first;
inside a block attention, then MLP, then the block output), as nnsight requires.

Rows are chunked so that one forward stays within a memory budget; the result does not depend on
the chunking (tests compare one cell per forward with many). A restoration first touching layer l
at token t leaves blocks below l, and tokens before t, exactly as in the plain corrupted run, so
chunks group cells by (t, l), start from the corrupted run's block outputs (nnsight `.skip`) and
feed only tokens t … T−1, with the corrupted run's keys/values for the tokens before
(`core.tracing_cache`, which also plans the chunks): the same numbers from far fewer
(row, token, block) evaluations than the one-forward-per-cell loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.tracing_cache import overhead_scale, plan_chunks, prefix_cache

COMPONENTS = ("attn", "mlp", "hidden")  # execution order inside one block


@dataclass(frozen=True)
class Patch:
    """Overwrite component `component` of block `layer` at (rows[i], tokens[i]) with values[i]."""

    layer: int
    component: str          # "attn" | "mlp" | "hidden" (the block output h^l)
    rows: torch.Tensor      # (n,) long
    tokens: torch.Tensor    # (n,) long
    values: torch.Tensor    # (n, d)


def component_output(handle, layer: int, component: str):
    """The nnsight value of a component's output inside a trace: a (B, T, d) tensor.

    Attention modules return a tuple (attn_out, weights) in transformers 5: take [0]. Decoder
    blocks return a plain tensor (tuple in older versions: [0] then too).
    """
    if component == "attn":
        return handle.envoy(layer, "attn").output[0]
    if component == "mlp":
        return handle.envoy(layer, "mlp").output
    out = handle.layer(layer).output
    return out[0] if isinstance(out, tuple) else out


def make_noise(samples: int, n_tokens: int, d_model: int, level: float, seed: int,
               device, dtype) -> torch.Tensor:
    """Gaussian noise ε ~ N(0, level²), (S, n_subject_tokens, d), from a seeded CPU generator.

    Drawn once per trace and reused by every restoration, so cells differ only in what they restore.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    eps = torch.randn(samples, n_tokens, d_model, generator=gen, dtype=torch.float32)
    return (level * eps).to(device=device, dtype=dtype)


def bytes_per_row(handle, n_tokens: int) -> int:
    """Rough peak activation memory of one row of a no-grad forward (for chunking).

    Per token: a few residual-width tensors, the MLP hidden layer and one row of attention scores
    per head; plus the last-token logits and their softmax (only the last position is unembedded).
    """
    cfg = handle.config
    heads = int(getattr(cfg, "num_attention_heads", getattr(cfg, "n_head", 16)))
    item = torch.finfo(handle.dtype).bits // 8
    per_token = 8 * handle.d_model + 2 * handle.d_mlp + 2 * heads * n_tokens
    return int(item * n_tokens * per_token + 8 * int(cfg.vocab_size))


def cells_per_forward(handle, n_tokens: int, samples: int, memory_mb: float) -> int:
    """How many restorations (S rows each) fit one forward under `memory_mb`; at least 1."""
    rows = int(memory_mb * 2**20) // max(1, bytes_per_row(handle, n_tokens))
    return max(1, rows // samples)


def skip_depth(patches: list[Patch]) -> int:
    """The last block whose output every row shares with the plain corrupted run: −1 if a patch
    touches block 0's internals, else up to the first patched layer (inclusive when that layer
    is patched only at its block output, which can then be written straight into the copy)."""
    if not patches:
        return -1
    first = min(p.layer for p in patches)
    only_hidden = all(p.component == "hidden" for p in patches if p.layer == first)
    return first if only_hidden else first - 1


def corrupted_forward(handle, input_ids: torch.Tensor, span: tuple[int, int], noise: torch.Tensor,
                      n_rows: int, patches: list[Patch], answer_id: int,
                      save: dict[tuple[int, str], int | None] | None = None,
                      corrupted_hidden: torch.Tensor | None = None, kv=None, prefix: int = 0,
                      cache=None, work: dict | None = None):
    """One forward of `n_rows` corrupted copies of the prompt with `patches` applied.

    input_ids: (1, T) the prompt; span: subject tokens [s0, s1); noise: (S, s1-s0, d) with
    n_rows a multiple of S (row r gets noise[r % S]). The subject-token embeddings are corrupted,
    h⁰[r, s0:s1] += ε[r % S], then the patches overwrite component outputs.

    corrupted_hidden: (L, S, T, d) block outputs of the plain corrupted run. When given, blocks
    0 … k (k = `skip_depth(patches)`) are not run: no patch reaches them, so their outputs are
    the corrupted run's, and block k's output is taken from `corrupted_hidden` (with block-k
    patches written into it). Same numbers, fewer layers computed.

    kv, prefix: the corrupted run's per-block (keys, values), each (S, heads, T, head_dim), and
    a token count no patch reaches below (`core.tracing_cache`): only tokens prefix … T−1 are
    fed, tokens < prefix come from the cache. cache: an empty `DynamicCache` that this (full,
    unpatched-prefix) run fills with its keys and values.

    work: when given, adds 1 to work["forwards"] and rows × tokens fed × blocks run to
    work["block_evals"].

    Returns (p, saved): p (n_rows,) float32 — P(answer) at the last position of every row;
    saved maps each (layer, component) of `save` to its output at the given token (n_rows, d),
    or at all tokens (n_rows, T, d) when the token is None.
    Caller holds `handle.lock` and `torch.no_grad()`.
    """
    S = noise.shape[0]
    T = input_ids.shape[1]
    s0, s1 = span
    save = dict(save or {})
    prefix = prefix if kv is not None and not save else 0
    n = T - prefix                                                              # tokens fed
    dev = input_ids.device
    batch = {"input_ids": input_ids[:, prefix:].expand(n_rows, n),
             "attention_mask": torch.ones(n_rows, T, dtype=torch.long, device=dev)}
    kwargs: dict = {"logits_to_keep": 1, "use_cache": cache is not None or prefix > 0}
    if prefix > 0:   # tokens < prefix: keys/values of the corrupted run, row r ← sample r mod S
        kwargs["cache"] = prefix_cache(handle, kv, prefix, n_rows // S)
        kwargs["position_ids"] = torch.arange(prefix, T, device=dev).expand(n_rows, n)
    elif cache is not None:
        kwargs["cache"] = cache
    a = max(s0, prefix)                                     # first subject token that is fed
    noise_rows = noise[:, a - s0:].repeat(n_rows // S, 1, 1)                    # (n_rows, s1-a, d)
    skip = skip_depth(patches) if corrupted_hidden is not None and not save else -1
    if work is not None:
        work["forwards"] = work.get("forwards", 0) + 1
        work["block_evals"] = work.get("block_evals", 0) + n_rows * n * (handle.n_layers - skip - 1)
    start = None
    if skip >= 0:
        start = corrupted_hidden[skip][:, prefix:].repeat(n_rows // S, 1, 1)   # (n_rows, n, d)
        for p in patches:
            if p.layer == skip:
                start[p.rows, p.tokens - prefix] = p.values
        patches = [p for p in patches if p.layer > skip]
    by_key: dict[tuple[int, str], list[Patch]] = {}
    for p in patches:
        by_key.setdefault((p.layer, p.component), []).append(p)
    keys = sorted(set(by_key) | set(save), key=lambda k: (k[0], COMPONENTS.index(k[1])))
    saved: dict[tuple[int, str], torch.Tensor] = {}
    with handle.model.trace(batch, **kwargs):
        emb = handle.embed.output                                               # (n_rows, n, d)
        if s1 > a:
            emb[:, a - prefix:s1 - prefix] += noise_rows
        for j in range(skip + 1):  # blocks 0..skip: not run; only block `skip`'s output is read
            handle.layer(j).skip(start)
        for key in keys:  # ascending (layer, component): nnsight's execution order
            out = component_output(handle, *key)                                # (n_rows, T, d)
            for p in by_key.get(key, ()):
                out[p.rows, p.tokens - prefix if prefix else p.tokens] = p.values
            if key in save:
                tok = save[key]
                saved[key] = (out if tok is None else out[:, tok]).clone().save()
        logits = handle.lm_head.output[:, -1]                                   # (n_rows, V)
        p_answer = torch.softmax(logits.float(), dim=-1)[:, answer_id].save()
    return p_answer.detach().float().cpu(), saved


def clean_forward(handle, input_ids: torch.Tensor, components: tuple[str, ...]):
    """The clean run: next-token distribution at the last position and every layer's component
    outputs at every token, {component: (L, T, d)}. Caller holds the lock and no_grad()."""
    L = handle.n_layers
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    states: dict[str, list] = {c: [] for c in components}
    with handle.model.trace(batch, logits_to_keep=1, use_cache=False):
        for layer in range(L):
            for comp in COMPONENTS:
                if comp in states:
                    states[comp].append(component_output(handle, layer, comp)[0].clone().save())
        probs = torch.softmax(handle.lm_head.output[0, -1].float(), dim=-1).save()   # (V,)
    return probs.detach().cpu(), {c: torch.stack(v) for c, v in states.items()}


def run_cells(handle, input_ids, span, noise, answer_id: int, n_cells: int, patches_for,
              max_cells: int, progress=None, phase: str = "", first_layers: list[int] | None = None,
              corrupted_hidden: torch.Tensor | None = None, first_tokens: list[int] | None = None,
              kv=None, work: dict | None = None) -> torch.Tensor:
    """P(answer) averaged over the S noise samples for each of `n_cells` restorations.

    patches_for(cells: list[int]) -> list[Patch] builds the patches of a chunk of cells, with
    rows numbered from 0 inside the chunk (cell k of the chunk owns rows k·S … k·S+S-1).
    Chunks hold at most `max_cells` cells. With `first_layers` (the first block each cell's
    forward must run, see `skip_depth`) and `corrupted_hidden`, a forward skips the blocks its
    rows share with the corrupted run; with `first_tokens` (the first token each cell's patches touch) and `kv` (the
    corrupted run's keys/values) it feeds only the tokens from there on. `plan_chunks` groups
    cells so that little is recomputed. `work`, when given, accumulates "forwards" and
    "block_evals" (rows × tokens fed × blocks run, summed over forwards: the compute, in units
    of one block on one token of one noisy row). Returns (n_cells,).
    """
    S, T, L = noise.shape[0], input_ids.shape[1], handle.n_layers
    skip = bool(first_layers) and corrupted_hidden is not None
    blocks = [min(max(0, f), L) for f in first_layers] if skip else [0] * n_cells
    toks = list(first_tokens) if first_tokens is not None and kv is not None else [0] * n_cells
    out = torch.empty(n_cells)
    done = 0
    overhead = overhead_scale(handle.d_model, handle.d_mlp, torch.device(handle.device).type)
    for chunk in plan_chunks(toks, blocks, T, L, S, max_cells, overhead):
        with handle.lock, torch.no_grad():
            p, _ = corrupted_forward(handle, input_ids, span, noise, len(chunk) * S,
                                     patches_for(chunk), answer_id,
                                     corrupted_hidden=corrupted_hidden if skip else None,
                                     kv=kv, prefix=min(toks[i] for i in chunk), work=work)
        out[chunk] = p.view(len(chunk), S).mean(dim=1)                         # mean over samples
        done += len(chunk)
        if progress:
            progress(done, n_cells, phase)
    return out


def sample_rows(cell_in_chunk: int, samples: int, device) -> torch.Tensor:
    """Rows of one cell inside its chunk: c·S … c·S+S-1."""
    return torch.arange(cell_in_chunk * samples, (cell_in_chunk + 1) * samples, device=device)
