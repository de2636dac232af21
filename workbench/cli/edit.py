"""`workbench edit EDITS` and `workbench eval`: MEMIT from the command line.

    workbench edit edits.csv --layers 0,1,2 --out edited-model/ --json result.json
    workbench eval --n 100 --json scores.json        # demo model, its world's CounterFact cases
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from workbench.cli import common
from workbench.cli.common import TqdmProgress, add_json_arg, add_model_args, write_json


def add_hparam_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("MEMIT hyperparameters (default: the model's preset)")
    g.add_argument("--method", default="memit", help="editing method (default memit)")
    g.add_argument("--layers", default=None, metavar="R", help="layers R to edit, e.g. 3,4,5 or 3-8")
    g.add_argument("--hparams", default=None, metavar="F",
                   help="hyperparameters JSON: this tool's format or the reference implementation's")
    g.add_argument("--lambda", dest="mom2_weight", type=float, default=None, metavar="X",
                   help="λ, the covariance weight")
    g.add_argument("--steps", dest="v_steps", type=int, default=None, metavar="N",
                   help="optimisation steps for z")
    g.add_argument("--clamp", dest="clamp_norm_factor", type=float, default=None, metavar="X",
                   help="‖δ‖ ≤ clamp·‖h‖")
    g.add_argument("--kl", dest="kl_factor", type=float, default=None, metavar="X", help="KL factor")
    g.add_argument("--corpus", default=None, metavar="C", help="corpus for the key statistics: demo, a file, or a dataset name")
    g.add_argument("--n-samples", dest="n_samples", type=int, default=None, metavar="N",
                   help="corpus records for the statistics")
    g.add_argument("--batch-size", dest="batch_size", type=int, default=None, metavar="N",
                   help="edits optimised together (0 = all, 1 = serial)")
    g.add_argument("--n-context", dest="n_context", type=int, default=None, metavar="N",
                   help="model-generated context prefixes for z (Eq. 16), besides the bare prompt")


def parse_layers(text: str | None) -> list[int] | None:
    """'3,4,5' or '3-8' -> layer numbers; None (option not given) -> None (the preset's)."""
    from core.errors import BadInputError

    if text is None:
        return None
    out = []
    try:
        for part in text.split(","):
            if not part.strip():
                raise ValueError("empty entry")
            if "-" in part.strip()[1:]:
                a, b = part.split("-", 1)
                out += list(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise BadInputError(f"'{text}' is not a list of layers like 3,4,5 or 3-8", field="layers") from None
    return out


def hparams_from_args(handle, args):
    """The preset for this model, then --hparams F, then single options on top."""
    from core.errors import BadInputError
    from core.hparams import MemitHparams, from_reference_json, preset_for

    if args.method != "memit":
        return None
    hp = preset_for(handle, layers=parse_layers(args.layers)) if not args.hparams else None
    if args.hparams:
        try:
            d = json.loads(Path(args.hparams).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadInputError(f"cannot read {args.hparams}: {e}", field="hparams") from None
        if not isinstance(d, dict):
            kind = {list: "a list", str: "a string", bool: "true/false"}.get(type(d), "a number" if d is not None else "null")
            raise BadInputError(f"{args.hparams} holds {kind}, not a JSON object of hyperparameters",
                                field="hparams")
        hp = MemitHparams.from_dict(d) if "mom2_weight" in d else from_reference_json(d)
    hp = hp.replace(layers=parse_layers(args.layers), mom2_weight=args.mom2_weight, v_steps=args.v_steps,
                    clamp_norm_factor=args.clamp_norm_factor, kl_factor=args.kl_factor,
                    corpus=args.corpus, n_samples=args.n_samples, batch_size=args.batch_size,
                    n_context=args.n_context)
    handle.check_layers(hp.layers)
    return hp


def register(sub) -> None:
    p = sub.add_parser("edit", help="apply a batch of edits (CSV/JSON) with MEMIT and show the metrics",
                       description="Read edit requests, write them into the model with MEMIT, print "
                       "before/after metrics; --out saves the edited model (save_pretrained).")
    p.add_argument("edits", help="edit requests: CSV (subject, relation, object[, true_object]), JSON, "
                   "CounterFact or zsRE")
    p.add_argument("--format", default=None, choices=["csv", "json", "counterfact", "zsre"],
                   help="input format (default: from the extension and content)")
    p.add_argument("--out", default=None, metavar="DIR", help="save the edited model to DIR (a HuggingFace folder plus "
                   "workbench_edit.json: base model, its hash, method, layers, the edits)")
    p.add_argument("--workspace", default=None, metavar="DIR",
                   help="edit on top of this workspace's history and record the batch there "
                   "(default: $WORKBENCH_HOME or the user's cache folder; see `workbench session`)")
    p.add_argument("--no-record", action="store_true",
                   help="edit the unedited weights and record nothing in the workspace")
    add_model_args(p)
    add_hparam_args(p)
    add_json_arg(p)
    p.set_defaults(handler=cmd_edit)

    e = sub.add_parser("eval", help="CounterFact evaluation: ES/PS/NS/S before and after editing n cases",
                       description="Edit the first n usable CounterFact cases at once and report the "
                       "paper's scores (percent) before and after, and NS over the neighbours the batch does "
                       "not edit at all (ns_outside). Default: the demo model and its world's "
                       "counterfact.json.")
    e.add_argument("--dataset", default=None, metavar="CF.json",
                   help="CounterFact-format JSON (default assets/world/counterfact.json)")
    e.add_argument("--n", type=int, default=100, help="number of edits (default 100)")
    e.add_argument("--all-neighbours", action="store_true",
                   help="count every neighbourhood prompt in NS, also those about subjects this batch "
                   "edits under the same relation (excluded by default: their true object changes on purpose)")
    add_model_args(e)
    add_hparam_args(e)
    add_extra_keys_arg(e)
    add_json_arg(e)
    e.set_defaults(handler=cmd_eval)

    c = sub.add_parser("capacity", help="how many edits fit: stored share, leak and key spectrum "
                       "against n, from the keys alone (no editing)",
                       description="For the first n cases of an edit set (each n of --sizes) and each "
                       "layer of R, read the keys MEMIT would use and compute in closed form (Eq. 14, "
                       "Woodbury) the share of an independent residual each edit would keep, the "
                       "smallest eigenvalue of Kᵀ C⁻¹ K/λ (keys as columns), and how much would leak "
                       "onto the keys of subjects outside the batch. Seconds instead of an edit; the "
                       "model is not changed. Default: the demo model and its world's counterfact.json.")
    c.add_argument("edits", nargs="?", default=None,
                   help="edit requests (CSV/JSON/CounterFact/zsRE; default: the demo world's counterfact.json)")
    c.add_argument("--sizes", default="100,300,1000", help="numbers of edits n (default 100,300,1000)")
    c.add_argument("--outside", type=int, default=300, metavar="N",
                   help="the next N cases after the largest n: subjects outside the batch, for the leak "
                   "(default 300; 0 skips it)")
    add_model_args(c)
    c.add_argument("--layers", default=None, metavar="R", help="layers R (default: the preset's)")
    c.add_argument("--lambda", dest="mom2_weight", type=float, default=None, metavar="X",
                   help="λ, the covariance weight (default: the preset's)")
    c.add_argument("--corpus", default=None, metavar="C",
                   help="corpus for the key statistics C: demo, a file, or a dataset name (default: the preset's)")
    c.add_argument("--n-samples", dest="n_samples", type=int, default=None, metavar="N",
                   help="corpus records for C (default: the preset's)")
    add_extra_keys_arg(c)
    add_json_arg(c)
    c.set_defaults(handler=cmd_capacity)


def add_extra_keys_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--extra-keys", type=int, default=None, metavar="N",
                   help="what-if experiment: before measuring, add N random hidden units with zero output "
                   "weights to the MLPs of R (the model computes the same; MEMIT gets d_mlp + N key "
                   "dimensions per layer; see core/widen.py). In memory only, nothing is saved")
    p.add_argument("--extra-keys-seed", type=int, default=0, metavar="S",
                   help="seed of the extra units' random input weights (default 0)")


def widen_for_args(handle, layers, args) -> dict:
    """Apply --extra-keys to the loaded model (a fresh copy per command); what the command's JSON
    records about it ({} when not asked)."""
    if args.extra_keys is None:
        return {}
    from core.widen import widen_mlps

    widths = widen_mlps(handle, layers, args.extra_keys, seed=args.extra_keys_seed)
    if args.json != "-":
        print(f"widened the MLPs of layers {sorted(widths)} by {args.extra_keys} random units with zero "
              f"output weights (key dimensions {', '.join(f'{l}: {d}' for l, d in widths.items())}; "
              "the model's outputs are unchanged)")
    return {"extra_keys": args.extra_keys, "extra_keys_seed": args.extra_keys_seed, "d_mlp": widths}


def _fmt(x) -> str:
    return "   -" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:5.1f}"


def print_scores(pre: dict, post: dict, keys=("ES", "PS", "NS", "S", "new_top1")) -> None:
    print(f"{'':8}" + "".join(f"{k:>9}" for k in keys))
    for name, s in (("before", pre), ("after", post)):
        print(f"{name:8}" + "".join(f"{_fmt(s.get(k)):>9}" for k in keys))


def true_object_note(requests) -> str | None:
    """Why ES/PS/NS show '-' (or count fewer edits): they need each edit's true object."""
    missing = sum(1 for r in requests if not r.target_true)
    if not missing:
        return None
    if missing == len(requests):
        return ("ES, PS and NS compare the new object with the true one, so they need a true_object "
                "column; without it they show '-' (new_top1: how often the new object is now the top answer)")
    return (f"{missing} of {len(requests)} edits have no true_object: ES, PS and NS average over the "
            f"other {len(requests) - missing}")


def cmd_edit(args: argparse.Namespace) -> int:
    """With --json - stdout carries only the JSON: everything else goes to stderr."""
    common.check_output_folder(args.out, "--out")
    with common.human_to_stderr(args) as stdout:
        return _edit(args, stdout)


def _edit(args: argparse.Namespace, stdout) -> int:
    from core.editing import edit, revert
    from core.metrics import counterfact_scores, summarize
    from core.requests import read_requests, validate_requests

    requests = read_requests(args.edits, fmt=args.format)
    handle = common.load_from_args(args)
    ledger = None
    if not args.no_record:
        from workbench.cli.session import session_for

        ledger, replayed = session_for(handle, args.workspace)
        if replayed.batch_ids:
            print(f"on top of the workspace's batches {replayed.batch_ids}")
    report = validate_requests(requests, handle.tokenizer, handle.max_length)
    report.raise_if_bad()
    for w in report.warnings:
        print(f"warning: {w}")
    hp = hparams_from_args(handle, args)
    progress = TqdmProgress()
    t = time.perf_counter()
    pre = summarize(counterfact_scores(handle, report.requests, progress=progress))
    t_pre = time.perf_counter() - t
    applied = edit(handle, report.requests, method=args.method, hparams=hp, progress=progress)
    try:
        return _report_and_record(args, stdout, handle, ledger, applied, report.requests, pre, t_pre, progress)
    except BaseException:
        revert(handle, applied)            # a failed edit leaves the weights as they were
        raise


def _report_and_record(args, stdout, handle, ledger, applied, requests, pre, t_pre, progress) -> int:
    from core.metrics import counterfact_scores, summarize

    t = time.perf_counter()
    post_df = counterfact_scores(handle, requests, progress=progress)
    post = summarize(post_df)
    t_post = time.perf_counter() - t
    progress.close()
    result = applied.result
    for note in [*result.notes, true_object_note(result.requests)]:
        if note:
            print(f"note: {note}")
    print(f"edited {len(result.requests)} facts in layers {result.layers} "
          f"({result.timings.get('total', 0):.1f} s)")
    print_scores(pre, post)
    for layer in result.layers:
        stored = result.stored_fraction.get(layer)
        change = result.output_change.get(layer)
        print(f"  layer {layer}: ‖ΔW‖ = {result.delta_norms[layer]:.4g}  "
              f"(‖ΔW‖/‖W‖ = {result.relative_norms[layer]:.3g})"
              + (f"  output change {100 * change:.1f} %" if change is not None else "")
              + (f"  stored {100 * stored:.0f} % of its share (median edit)" if stored is not None else ""))
    from workbench.edit_flow import size_note, size_warning

    for message in (size_warning(result), size_note(result)):
        if message:
            print(f"note: {message}")
    if args.out:
        from core.patch import save_edited_model

        out = save_edited_model(handle, args.out, note={
            "method": result.method, "layers": result.layers, "hparams": result.hparams,
            "requests": [r.to_dict() for r in result.requests]})
        print(f"saved the edited model to {out}")
    payload = {"n": len(result.requests), "method": result.method, "layers": result.layers,
               "pre": pre, "post": post, "delta_norms": result.delta_norms,
               "relative_norms": result.relative_norms, "output_change": result.output_change,
               "stored_fraction": result.stored_fraction,
               "seconds": dict(result.timings, pre_eval=t_pre, post_eval=t_post),
               "per_edit": post_df.to_dict(orient="records"), "notes": result.notes}
    if ledger is None:
        write_json(payload, args.json, stream=stdout)
        return 0
    from workbench.cli.session import record_cli_edit

    record = record_cli_edit(ledger, handle, applied, post)
    try:
        write_json({**payload, "batch": record.id}, args.json, stream=stdout)
    except BaseException:
        ledger.delete(record.id)           # the command failed: it records nothing
        raise
    print(f"recorded as batch {record.id} in {ledger.root} (undo: workbench session undo)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from core.errors import BadInputError
    from core.evaluation import SCORES, evaluate_edit
    from core.model import assets_dir
    from core.requests import load_dataset_requests

    if args.n < 1:
        raise BadInputError("must be at least 1", field="n")
    dataset = args.dataset or str(assets_dir() / "world" / "counterfact.json")
    if not Path(dataset).is_file():
        raise BadInputError(f"{dataset} not found", field="dataset")
    requests, skipped = load_dataset_requests(dataset, args.n)
    if len(requests) < args.n:
        print(f"note: {dataset} has only {len(requests)} usable case(s); evaluating {len(requests)} "
              f"edits instead of --n {args.n}", file=sys.stderr if args.json == "-" else sys.stdout)
    handle = common.load_from_args(args)
    hp = hparams_from_args(handle, args)
    widened = widen_for_args(handle, hp.layers, args)
    progress = TqdmProgress()
    try:
        ev = evaluate_edit(handle, requests, method=args.method, hparams=hp, progress=progress,
                           exclude_edited_neighbours=not args.all_neighbours)
    finally:
        progress.close()
    out = {"n": ev.n, "model": handle.name, "dataset": dataset, **ev.to_dict(), "skipped": len(skipped),
           **widened}
    write_json(out, args.json)
    if args.json != "-":
        for note in ev.notes:
            print(f"note: {note}")
        print(f"{out['n']} edits in layers {out['layers']} ({ev.seconds['edit']:.1f} s; {len(skipped)} records "
              f"skipped; {out['neighbours_excluded']} neighbourhood prompts about subjects edited under the "
              "same relation left out of NS)")
        print_scores(ev.pre, ev.post, SCORES)
        ns_out = out["ns_outside"]
        if ns_out["prompts"]:
            print(f"NS over the {ns_out['prompts']} neighbourhood prompts about subjects the batch does not edit: "
                  f"{_fmt(ns_out['pre']).strip()} -> {_fmt(ns_out['post']).strip()}")
        for layer, stored in ev.stored_fraction.items():
            print(f"  layer {layer}: the update stored {100 * stored:.0f} % of its share of the "
                  "residual for the median edit")
    return 0


def cmd_capacity(args: argparse.Namespace) -> int:
    from core.capacity import capacity_curve, crowded
    from core.errors import BadInputError
    from core.hparams import preset_for
    from core.model import assets_dir
    from core.requests import load_dataset_requests, read_requests, validate_requests

    sizes = common.parse_sizes(args.sizes)
    if args.outside < 0:
        raise BadInputError(f"must be ≥ 0, got {args.outside}", field="outside")
    path = args.edits or str(assets_dir() / "world" / "counterfact.json")
    if not Path(path).is_file():
        raise BadInputError(f"{path} not found", field="edits")
    handle = common.load_from_args(args)
    if path.lower().endswith((".csv", ".tsv")):          # an edit file: strict, every problem reported
        requests = read_requests(path)[:sizes[-1] + args.outside]
    else:                                                # an evaluation set: its first usable records
        requests, _ = load_dataset_requests(path, sizes[-1] + args.outside)
    requests = validate_requests(requests, handle.tokenizer, handle.max_length).requests
    if len(requests) < sizes[-1]:
        raise BadInputError(f"{path} has only {len(requests)} usable cases (largest size {sizes[-1]})",
                            field="sizes")
    batch_subjects = {r.subject for r in requests[:sizes[-1]]}
    outside = [r for r in requests[sizes[-1]:] if r.subject not in batch_subjects]
    hp = preset_for(handle, layers=parse_layers(args.layers)).replace(
        mom2_weight=args.mom2_weight, corpus=args.corpus, n_samples=args.n_samples)
    widened = widen_for_args(handle, hp.layers, args)
    progress = TqdmProgress()
    try:
        rows = capacity_curve(handle, requests, hp, sizes, outside=outside, progress=progress)
    finally:
        progress.close()
    write_json({"model": handle.name, "edits": path, "layers": hp.layers, "lambda": hp.mom2_weight,
                "outside": len(outside), "rows": [r.to_dict() for r in rows],
                **widened}, args.json)
    if args.json != "-":
        print(f"capacity of layers {hp.layers} at λ = {hp.mom2_weight:g} (keys of the unedited model; "
              f"leak onto {len(outside)} subjects outside the batch, in residuals)")
        print(f"{'layer':>5} {'n':>6} {'stored':>7} {'p10':>6} {'eig min':>8} {'leak':>6} {'p90':>6}")
        for r in rows:
            leak = "-" if r.leak_median is None else f"{r.leak_median:6.2f}"
            p90 = "-" if r.leak_p90 is None else f"{r.leak_p90:6.2f}"
            print(f"{r.layer:>5} {r.n:>6} {r.stored_median:7.2f} {r.stored_p10:6.2f} {r.eig_min:8.3g} "
                  f"{leak:>6} {p90:>6}")
        worst = crowded(rows)
        if worst is not None:
            print(f"note: at n = {worst.n} layer {worst.layer} keeps {100 * worst.stored_median:.0f} % of the "
                  f"median edit: {worst.n} keys crowd its {handle.d_mlp_at(worst.layer)} key dimensions"
                  + (". Edit fewer at once, add layers to R, or see what a wider layer would hold with "
                     "--extra-keys N." if not widened else ", extra keys included."))
    return 0
