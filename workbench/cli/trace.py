"""`workbench trace` (one prompt) and `workbench trace-avg` (averaged over a knowns file)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workbench.cli.common import (TqdmProgress, add_json_arg, add_model_args, check_output_file, load_from_args,
                                  write_json)


def register(sub) -> None:
    p = sub.add_parser(
        "trace", help="causal trace of one prompt: heatmaps, severed path, suggested layers",
        description="Corrupt the subject tokens with noise, restore one state at a time, and show "
        "how much of the answer's probability comes back (hidden states, MLP and attention "
        "outputs), plus the severed-path test at the last subject token and a suggested edit range.")
    p.add_argument("--prompt", required=True, help="the prompt, e.g. 'The Eiffel Tower is located in'")
    p.add_argument("--subject", required=True, help="the subject as it appears in the prompt")
    p.add_argument("--answer", default=None, help="expected answer (default: the model's top-1 token)")
    p.add_argument("--kind", default="all", choices=["hidden", "mlp", "attn", "all"],
                   help="what to restore (default: all three)")
    p.add_argument("--no-severed", action="store_true", help="skip the severed-path trace")
    add_trace_settings(p)
    add_model_args(p)
    add_json_arg(p)
    p.add_argument("--png", metavar="F", default=None,
                   help="write the heatmaps as PNG to F (a .png name) and the severed-path chart beside it, "
                   "with -severed before the suffix: trace.png -> trace-severed.png")
    p.set_defaults(handler=cmd_trace)

    p = sub.add_parser(
        "trace-avg", help="causal traces averaged over many known facts; suggested edit range R",
        description="Average indirect effects per token category and layer over the facts the model "
        "gets right (knowns JSON format of Meng et al.), the severed-path gap, and the suggested "
        "MEMIT layer range R. Exact duplicate facts (same prompt, subject and attribute) count once.")
    p.add_argument("--facts", default=None,
                   help="knowns JSON (default: the demo world's assets/world/knowns.json)")
    p.add_argument("--n", type=int, default=None, help="use at most N distinct known facts (default: all)")
    p.add_argument("--kind", default="all", choices=["hidden", "mlp", "attn", "all"])
    p.add_argument("--no-severed", action="store_true", help="skip the severed-path traces")
    p.add_argument("--range-size", type=int, default=None,
                   help="number of layers in the suggested range (default round(6/28 × layers))")
    add_trace_settings(p)
    add_model_args(p)
    add_json_arg(p)
    p.add_argument("--png", metavar="F", default=None, help="write the overview figure as PNG to F")
    p.set_defaults(handler=cmd_trace_avg)


def add_trace_settings(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tracing")
    g.add_argument("--noise", type=float, default=3.0,
                   help="noise level as a multiple of sigma (default 3, as in the paper)")
    g.add_argument("--sigma", type=float, default=None,
                   help="scale the noise multiplies (default: std of the subject-token embeddings; "
                   "1 makes --noise absolute)")
    g.add_argument("--samples", type=int, default=10, help="noisy copies per restoration (default 10)")
    g.add_argument("--window", type=int, default=None,
                   help="layers restored together for mlp/attn (default: the paper's 10 of 28 layers "
                   "scaled to the model's depth: 3 on the 8-layer demo model, 10 on GPT-J)")
    g.add_argument("--seed", type=int, default=1, help="noise seed (default 1)")
    g.add_argument("--memory-mb", type=float, default=256.0,
                   help="activation memory per batched forward (default 256)")


def settings_from_args(args):
    from core.tracing import TraceSettings

    return TraceSettings(noise=args.noise, sigma=args.sigma, samples=args.samples,
                         window=args.window, seed=args.seed, memory_mb=args.memory_mb).validate()


def _kinds(kind: str) -> list[str]:
    from core.tracing import KINDS

    return list(KINDS) if kind == "all" else [kind]


def cmd_trace(args: argparse.Namespace) -> int:
    from core.layer_select import suggest_from_trace
    from core.tracing import answer_note, check_kind, prepare_trace, run_grid
    from core.tracing_severed import run_severed

    kinds = [check_kind(k) for k in _kinds(args.kind)]
    settings = settings_from_args(args)
    if args.png and not args.no_severed:
        check_output_file(str(severed_png_path(args.png)), "--png", suffix=".png")
    handle = load_from_args(args)
    prep = prepare_trace(handle, args.prompt, args.subject, args.answer, settings)
    notes = [n for n in [answer_note(handle, args.prompt, args.answer)] if n]
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    progress = TqdmProgress("tracing")
    results = {k: run_grid(prep, k, progress=progress) for k in kinds}
    severed = None if args.no_severed else run_severed(prep, progress=progress)
    suggestion = suggest_from_trace(severed) if severed is not None else (
        suggest_from_trace(results["mlp"]) if "mlp" in results else None)
    out = {
        "prompt": prep.prompt, "subject": prep.subject, "answer": prep.answer,
        "answer_id": prep.answer_id, "clean_prob": prep.clean_prob,
        "corrupted_prob": prep.corrupted_prob, "tokens": prep.tokens,
        "subject_span": [prep.span.start, prep.span.end], "n_layers": handle.n_layers,
        "settings": prep.settings_dict(),
        "traces": {k: {"scores": r.scores.tolist(), "effects": r.effects.tolist()} for k, r in results.items()},
        "severed": severed.to_dict() if severed is not None else None,
        "suggested_layers": suggestion.layers if suggestion else [], "notes": notes,
        "suggestion": suggestion.to_dict() if suggestion else None,
    }
    write_json(out, args.json)
    if args.png:
        _write_trace_pngs(args.png, results, severed, suggestion, _human(args))
    if args.json != "-":
        _print_trace(prep, results, severed, suggestion)
    return 0


def _human(args):
    """Where messages go: stderr when stdout carries the JSON (--json -)."""
    return sys.stderr if args.json == "-" else sys.stdout


def _write_trace_pngs(path: str, results, severed, suggestion, out) -> None:
    from workbench.charts.export import write_png
    from workbench.charts.trace import severed_chart, trace_heatmaps

    write_png(trace_heatmaps(results), path)
    print(f"wrote {path}", file=out)
    if severed is not None:
        sev_path = severed_png_path(path)
        write_png(severed_chart(severed, suggestion=suggestion), sev_path)
        print(f"wrote {sev_path}", file=out)


def severed_png_path(path: str) -> Path:
    """Where `trace --png F` puts the severed-path chart: trace.png -> trace-severed.png."""
    p = Path(path)
    return p.with_name(f"{p.stem}-severed{p.suffix or '.png'}")


def _print_trace(prep, results, severed, suggestion) -> None:
    print(f"prompt  {prep.prompt!r}   subject {prep.subject!r} (tokens {prep.span.start}..{prep.span.last})")
    print(f"answer  {prep.answer!r}   clean p = {prep.clean_prob:.4f}   corrupted p = {prep.corrupted_prob:.4f}"
          f"   noise level = {prep.noise_level:.4g}")
    for k, r in results.items():
        e = r.effects
        t, layer = divmod(int(e.argmax()), e.shape[1])
        last = e[prep.span.last]
        print(f"{k:<6}  strongest restoration: token {t} {prep.tokens[t]!r} at layer {layer} "
              f"(effect {e[t, layer]:+.4f});  last subject token peaks at layer {int(last.argmax())} "
              f"({last.max():+.4f})")
    if severed is not None:
        gap = severed.gap
        print(f"severed path at {prep.tokens[severed.token]!r}: largest MLP-severed gap at layer "
              f"{int(gap.argmax())} ({gap.max():+.4f})")
    if suggestion is not None:
        print(f"suggested layers R = {suggestion.layers}  ({suggestion.rule})")
        if suggestion.note:
            print(f"note: {suggestion.note}")


def default_facts_path() -> Path:
    from core.model import assets_dir

    return assets_dir() / "world" / "knowns.json"


def cmd_trace_avg(args: argparse.Namespace) -> int:
    from core.errors import BadInputError
    from core.trace_avg import average_traces, load_facts
    from core.tracing import check_kind

    kinds = [check_kind(k) for k in _kinds(args.kind)]
    settings = settings_from_args(args)
    if args.range_size is not None and args.range_size < 1:
        raise BadInputError(f"must be at least 1, got {args.range_size}", field="range-size")
    facts = load_facts(args.facts or default_facts_path())
    handle = load_from_args(args)
    if args.range_size is not None and args.range_size > handle.n_layers:
        raise BadInputError(f"{args.range_size} layers, but {handle.name} has only {handle.n_layers}",
                            field="range-size")
    avg = average_traces(handle, facts, n=args.n, kinds=kinds, settings=settings,
                         severed=not args.no_severed, layer_range_size=args.range_size,
                         progress=TqdmProgress("tracing"))
    write_json(avg.to_dict(), args.json)
    if args.png:
        from workbench.charts.export import write_png
        from workbench.charts.trace import average_figure

        write_png(average_figure(avg), args.png)
        print(f"wrote {args.png}", file=_human(args))
    if args.json != "-":
        _print_average(avg)
    return 0


def _print_average(avg) -> None:
    print(f"facts used {avg.n_facts} (skipped: {avg.n_skipped_wrong} wrong, {avg.n_skipped_invalid} "
          f"untraceable, {avg.n_duplicates} duplicate)   mean clean p = {avg.clean_prob:.4f}   corrupted p = {avg.corrupted_prob:.4f}")
    header = "kind    category            " + " ".join(f"{i:>7d}" for i in range(avg.n_layers))
    print(header)
    for k, cats in avg.effects.items():
        for c, v in cats.items():
            print(f"{k:<7} {c:<19} " + " ".join(f"{x:+7.3f}" for x in v))
    if avg.severed is not None:
        for name, v in (("normal", avg.severed.normal), ("mlp severed", avg.severed.mlp_severed),
                        ("attn severed", avg.severed.attn_severed), ("gap", avg.severed.gap)):
            print(f"severed {name:<19} " + " ".join(f"{x:+7.3f}" for x in v))
    if avg.suggestion is not None:
        print(f"suggested layers R = {avg.suggestion.layers}  ({avg.suggestion.rule})")
        if avg.suggestion.note:
            print(f"note: {avg.suggestion.note}")
