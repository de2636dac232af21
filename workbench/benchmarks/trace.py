"""`workbench bench trace`: the batched restoration grid against one forward per (token, layer) cell.

Both paths run the same prompt, model, noise and kind in one process, after one shared clean run
and corrupted baseline; the loop is the reference implementation's shape (Meng et al.,
`trace_important_states`: one full corrupted forward of `samples` rows per cell). The grids must
agree (max |Δ| is reported), so the ratio compares two ways of computing the same numbers.
`batched_full_s` times the batched grid without reusing the corrupted run's lower layers, to
show how much of the gain is batching and how much is skipped computation.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", default=None,
                   help="prompt to trace (default: the first fact of the demo world's knowns.json, "
                   "or 'The Eiffel Tower is located in the city of' for other models)")
    p.add_argument("--subject", default=None, help="subject in the prompt (with --prompt)")
    p.add_argument("--kind", default="hidden", choices=["hidden", "mlp", "attn"],
                   help="what to restore (default hidden, as in Figure 8a)")
    p.add_argument("--samples", type=int, default=10, help="noisy copies per cell (default 10)")
    p.add_argument("--window", type=int, default=10, help="window for mlp/attn (default 10)")
    p.add_argument("--memory-mb", type=float, default=256.0,
                   help="activation memory per batched forward (default 256)")
    p.add_argument("--repeats", type=int, default=1,
                   help="time each path this many times and keep the fastest (default 1)")


def _default_fact(model: str) -> tuple[str, str]:
    from core.model import assets_dir

    path = assets_dir() / "world" / "knowns.json"
    if model == "demo" and path.is_file():
        first = json.loads(path.read_text())[0]
        return first["prompt"], first["subject"]
    return "The Eiffel Tower is located in the city of", "Eiffel Tower"


def _timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(args: argparse.Namespace) -> dict:
    from core.errors import BadInputError
    from core.tracing import TraceSettings, first_layer, prepare_trace, run_grid
    from core.tracing_batch import cells_per_forward
    from workbench.cli.common import load_from_args

    if (args.prompt is None) != (args.subject is None):
        raise BadInputError("give --prompt and --subject together", field="subject")
    prompt, subject = (args.prompt, args.subject) if args.prompt else _default_fact(args.model)
    settings = TraceSettings(samples=args.samples, window=args.window, memory_mb=args.memory_mb).validate()
    handle = load_from_args(args)
    prep = prepare_trace(handle, prompt, subject, None, settings)
    run_grid(prep, args.kind)                                  # warm-up (allocator, nnsight caches)
    batched_s, batched = _timed(lambda: run_grid(prep, args.kind), args.repeats)
    full_s, _ = _timed(lambda: run_grid(prep, args.kind, reuse_prefix=False), args.repeats)
    loop_s, loop = _timed(lambda: run_grid(prep, args.kind, batched=False), args.repeats)
    T, L = prep.n_tokens, handle.n_layers
    n_cells = (T - prep.span.start) * L
    per_forward = cells_per_forward(handle, T, settings.samples, settings.memory_mb)
    group = {}
    for layer in range(L):   # batched chunks never mix cells whose first touched layer differs
        f = first_layer(args.kind, layer, settings.window, L)
        group[f] = group.get(f, 0) + (T - prep.span.start)
    forwards = sum(-(-n // per_forward) for n in group.values())
    return {
        "batched_s": batched_s, "loop_s": loop_s, "ratio": loop_s / batched_s,
        "batched_full_s": full_s, "ratio_full": loop_s / full_s,
        "max_abs_diff": float(abs(batched.scores - loop.scores).max()),
        "model": handle.name, "device": str(handle.device), "dtype": str(handle.dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(), "prompt": prompt, "subject": subject,
        "kind": args.kind, "n_tokens": T, "n_layers": L, "samples": settings.samples,
        "cells": n_cells, "cells_per_batched_forward": min(per_forward, n_cells),
        "forwards_batched": forwards, "forwards_loop": n_cells,
        "repeats": args.repeats,
    }
