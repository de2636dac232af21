"""`workbench bench trace`: the batched restoration grid against one forward per (token, layer) cell.

Both paths run the same prompt, model, noise and kind in one process, after one shared clean run
and corrupted baseline; the loop is the reference implementation's shape (Meng et al.,
`trace_important_states`: one full corrupted forward of `samples` rows for every cell of the
grid). The grids must agree (max |Δ| is reported), so the ratio compares two ways of computing
the same numbers. The CPU may be shared: each repeat times the batched grid and the loop back to
back, and the medians are reported (`ratio`: the median of the per-repeat ratios).
`batched_full_s` times the batched grid feeding every token to every block, to show how much of
the gain is batching and how much is computation skipped.

`work_ratio` is the loop's compute over the batched grid's, counted in block evaluations (one
block on one token of one noisy row; `TraceResult.block_evals`): what the ratio would be if
both paths were purely compute-bound. Where a forward costs mostly fixed overhead (a GPU with a
small model), `ratio` rises above it; where the forwards are compute-bound (a CPU core running
the demo model at tens of GFLOP/s), `ratio` stays at or below it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

KINDS = ("hidden", "mlp", "attn")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", default=None,
                   help="prompt to trace (default: the first fact of the demo world's knowns.json, "
                   "or 'The Eiffel Tower is located in the city of' for other models)")
    p.add_argument("--subject", default=None, help="subject in the prompt (with --prompt)")
    p.add_argument("--kind", default="all", choices=["all", *KINDS],
                   help="what to restore (default all three kinds)")
    p.add_argument("--samples", type=int, default=10, help="noisy copies per cell (default 10)")
    p.add_argument("--window", type=int, default=None,
                   help="layers restored together for mlp/attn (default: the paper's 10 of 28 layers "
                   "scaled to the model's depth: 3 on the 8-layer demo model, 10 on GPT-J)")
    p.add_argument("--memory-mb", type=float, default=256.0,
                   help="activation memory per batched forward (default 256)")
    p.add_argument("--repeats", type=int, default=5,
                   help="time each path this many times and report medians (default 5)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")


def _default_fact(model: str) -> tuple[str, str]:
    from core.model import assets_dir

    path = assets_dir() / "world" / "knowns.json"
    if model == "demo" and path.is_file():
        first = json.loads(path.read_text())[0]
        return first["prompt"], first["subject"]
    return "The Eiffel Tower is located in the city of", "Eiffel Tower"


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_kind(prep, kind: str, repeats: int) -> dict:
    """Medians over `repeats` of the batched grid, the same without reuse, and the loop."""
    from core.tracing import run_grid

    run_grid(prep, kind)                                       # warm-up (allocator, nnsight caches)
    times = {"batched": [], "full": [], "loop": []}
    for _ in range(max(1, repeats)):
        t, batched = _timed(lambda: run_grid(prep, kind))
        times["batched"].append(t)
        t, _ = _timed(lambda: run_grid(prep, kind, reuse_prefix=False))
        times["full"].append(t)
        t, loop = _timed(lambda: run_grid(prep, kind, batched=False))
        times["loop"].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    T, L = prep.n_tokens, prep.handle.n_layers
    return {
        "batched_s": med["batched"], "loop_s": med["loop"],
        "ratio": statistics.median(lp / b for lp, b in zip(times["loop"], times["batched"])),
        "batched_full_s": med["full"], "ratio_full": med["loop"] / med["full"],
        "max_abs_diff": float(abs(batched.scores - loop.scores).max()),
        "cells": T * L, "skipped_cells": batched.skipped_cells, "shared_cells": batched.shared_cells,
        "forwards_batched": batched.forwards, "forwards_loop": loop.forwards,
        "block_evals_batched": batched.block_evals, "block_evals_loop": loop.block_evals,
        "work_ratio": loop.block_evals / max(1, batched.block_evals),
        "batched_runs_s": times["batched"], "loop_runs_s": times["loop"],
    }


def run(args: argparse.Namespace) -> dict:
    from core.errors import BadInputError
    from core.tracing import TraceSettings, prepare_trace
    from workbench.cli.common import load_from_args

    if (args.prompt is None) != (args.subject is None):
        raise BadInputError("give --prompt and --subject together", field="subject")
    if args.threads < 1:
        raise BadInputError(f"must be ≥ 1, got {args.threads}", field="threads")
    prompt, subject = (args.prompt, args.subject) if args.prompt else _default_fact(args.model)
    settings = TraceSettings(samples=args.samples, window=args.window, memory_mb=args.memory_mb).validate()
    kinds = KINDS if args.kind == "all" else (args.kind,)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        handle = load_from_args(args)
        prep = prepare_trace(handle, prompt, subject, None, settings)
        per_kind = {k: bench_kind(prep, k, args.repeats) for k in kinds}
    finally:
        torch.set_num_threads(threads)
    total = {key: sum(r[key] for r in per_kind.values())
             for key in ("batched_s", "loop_s", "cells", "skipped_cells", "forwards_batched", "forwards_loop",
                         "block_evals_batched", "block_evals_loop")}
    return {
        **total, "ratio": total["loop_s"] / total["batched_s"],
        "work_ratio": total["block_evals_loop"] / max(1, total["block_evals_batched"]),
        "max_abs_diff": max(r["max_abs_diff"] for r in per_kind.values()),
        "kinds": per_kind,
        "model": handle.name, "device": str(handle.device), "dtype": str(handle.dtype).replace("torch.", ""),
        "threads": args.threads, "prompt": prompt, "subject": subject,
        "subject_span": [prep.span.start, prep.span.end], "n_tokens": prep.n_tokens,
        "n_layers": handle.n_layers, "samples": settings.samples, "window": prep.settings.window,
        "repeats": args.repeats,
    }
