"""`workbench session …` (the edit ledger), `workbench compare` and `workbench scale`.

    workbench session list [--json F]            # the workspace's edit history
    workbench session undo | revert ID | delete ID
    workbench session export 1 3 --out edits.safetensors [--sum]
    workbench session apply edits.safetensors [--force]    # onto the model, recorded as batches
    workbench session replay [--save DIR]       # rebuild the edited model from the history
    workbench compare edits.csv --methods memit,rome,ft [--json F] [--png F]
    workbench scale --sizes 1,10,100,1000 [--methods memit,rome,ft] [--json F] [--png F]

The workspace is `--workspace DIR`, else $WORKBENCH_HOME, else the user's cache folder. A CLI
process starts from the base weights, so commands that need the edited model first replay the
history onto it (`Ledger.replay`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys

from workbench.cli import common
from workbench.cli.common import add_json_arg, add_model_args, write_json


def add_workspace_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", default=None, metavar="DIR",
                   help="workspace folder (default: $WORKBENCH_HOME or the user's cache folder)")


def open_ledger(args, *, write: bool = False):
    """The workspace's ledger. Commands that only read (write=False) do not create a workspace
    named by --workspace or $WORKBENCH_HOME: a missing one is an error (a typo, most likely)."""
    from core.ledger import Ledger

    workspace = getattr(args, "workspace", None)
    named = bool(workspace or os.environ.get("WORKBENCH_HOME"))
    ledger = Ledger(workspace, create=write or not named)
    rec = ledger.recovered
    if rec["removed_files"] or rec["broken_batches"]:
        print(f"note: workspace repaired: removed {len(rec['removed_files'])} unfinished file(s); "
              f"damaged batches: {rec['broken_batches'] or 'none'}", file=sys.stderr)
    return ledger


def session_for(handle, workspace=None):
    """(ledger, replay report): the workspace's history replayed onto a freshly loaded model."""
    from core.ledger import Ledger

    ledger = Ledger(workspace)
    return ledger, ledger.replay(handle)


def record_cli_edit(ledger, handle, applied, metrics: dict | None = None):
    """Record an edit the CLI applied (on top of `session_for`'s replay) as the next batch."""
    return ledger.record(handle, applied, {k: v for k, v in (metrics or {}).items()
                                           if isinstance(v, (int, float)) and not isinstance(v, bool)})


def register(sub) -> None:
    s = sub.add_parser("session", help="the edit history: list, undo, revert, export/apply patches, replay",
                       description="The workspace's edit ledger: every applied batch with its ΔW.")
    ss = s.add_subparsers(dest="session_command", metavar="ACTION")
    p = ss.add_parser("list", help="list the batches")
    add_workspace_arg(p)
    add_json_arg(p)
    p.set_defaults(handler=cmd_list)
    p = ss.add_parser("undo", help="undo the last applied batch")
    add_workspace_arg(p)
    p.set_defaults(handler=cmd_undo)
    for name, helptext, fn in (("revert", "take one batch out of the session", cmd_revert),
                               ("delete", "remove a batch from the history (reverting it first)", cmd_delete)):
        p = ss.add_parser(name, help=helptext)
        p.add_argument("id", type=int, help="batch id (see `workbench session list`)")
        add_workspace_arg(p)
        p.set_defaults(handler=fn)
    p = ss.add_parser("export", help="export batches as a patch (safetensors + JSON manifest)")
    p.add_argument("ids", type=int, nargs="+", help="batch ids")
    p.add_argument("--out", required=True, metavar="F", help="patch file to write (F and F.json)")
    p.add_argument("--sum", action="store_true", help="one summed ΔW per layer instead of one per batch")
    add_workspace_arg(p)
    p.set_defaults(handler=cmd_export)
    p = ss.add_parser("apply", help="apply a patch to the model and record it in the workspace",
                      description="Apply a patch to the model (after replaying the workspace's history) "
                      "and record its batches. A patch larger than the model allows (room for 8 batches "
                      "that each change every layer, at most 4 GB: the History page's limit too) is refused.")
    p.add_argument("patch", help="patch file from `workbench session export`")
    p.add_argument("--force", action="store_true", help="apply even if the patch was made on other base weights")
    add_model_args(p)
    add_workspace_arg(p)
    add_json_arg(p)
    p.set_defaults(handler=cmd_apply)
    p = ss.add_parser("replay", help="rebuild the edited model from the history (optionally save it)")
    # dest save_dir: nnsight gives every object a .save(), so argparse would see a "save" attribute
    # as already set and keep that method instead of the default
    p.add_argument("--save", dest="save_dir", default=None, metavar="DIR",
                   help="save the edited model (save_pretrained)")
    add_model_args(p)
    add_workspace_arg(p)
    add_json_arg(p)
    p.set_defaults(handler=cmd_replay)
    s.set_defaults(handler=lambda args, parser=s: _print_help(parser))

    for name, fn, helptext in (("compare", cmd_compare, "MEMIT, ROME and FT-W on the same batch of edits"),
                               ("scale", cmd_scale, "scaling curves: scores against number of edits (Figure 5)")):
        p = sub.add_parser(name, help=helptext, description=helptext + ". Each method starts from the "
                           "unedited weights; the unedited model is reported as a reference row.")
        if name == "compare":
            p.add_argument("edits", help="edit requests (CSV, JSON, CounterFact or zsRE)")
        else:
            p.add_argument("--sizes", default="1,10,100,1000", help="numbers of edits (default 1,10,100,1000)")
            p.add_argument("--dataset", default=None, metavar="CF.json",
                           help="CounterFact-format pool (default: the demo world's counterfact.json)")
        p.add_argument("--methods", default="memit,rome,ft", help="comma-separated (default memit,rome,ft)")
        p.add_argument("--layers", default=None, metavar="R", help="MEMIT layers R (ROME edits the middle one, FT the last)")
        p.add_argument("--hparams", default=None, metavar="F",
                       help="MEMIT hyperparameters JSON (this tool's format or the reference implementation's)")
        p.add_argument("--lambda", dest="mom2_weight", type=float, default=None, metavar="X", help="MEMIT's λ")
        p.add_argument("--rome-layer", type=int, default=None, help="ROME's layer instead")
        p.add_argument("--ft-layer", type=int, default=None, help="FT-W's layer instead")
        p.add_argument("--ft-lr", type=float, default=None, help="FT-W learning rate (default 5e-4)")
        p.add_argument("--gen-sample", type=int, default=10, metavar="N",
                       help="subjects to generate text about for GE/RS (0: skip; default 10)")
        p.add_argument("--all-neighbours", action="store_true",
                       help="count every neighbourhood prompt in NS, also those about subjects the batch "
                       "edits under the same relation (left out by default)")
        p.add_argument("--png", default=None, metavar="F", help="write the chart as PNG")
        add_model_args(p)
        add_json_arg(p)
        p.set_defaults(handler=fn)


# ---- session ------------------------------------------------------------------------------------

def _print_help(parser) -> int:
    parser.print_help()
    return 2


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def print_table(df, columns) -> None:
    cols = [c for c in columns if c in df]
    cells = [[_fmt(v) for v in row] for row in df[cols].itertuples(index=False)]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def cmd_list(args) -> int:
    ledger = open_ledger(args)
    batches = ledger.batches()
    write_json({"workspace": str(ledger.root), "batches": [
        {**b.summary(), "base_hash": b.base_hash, "requests": b.requests, "hparams": b.hparams,
         "metrics": b.metrics, "timings": b.timings, "revert_info": b.revert_info} for b in batches]}, args.json)
    if args.json != "-":
        print(f"workspace {ledger.root}: {len(batches)} batch(es)")
        if batches:
            print_table(ledger.table(), ["id", "time", "model", "method", "layers", "edits", "status",
                                         "ES", "PS", "NS", "S", "subjects"])
    return 0


def _report(report) -> None:
    how = {"ledger-only": "marked reverted (the next replay leaves it out)",
           "restore": "restored the weights before it (bit-exact)",
           "subtract": f"subtracted its ΔW (max drift from exact {report.max_drift:.3g})"}[report.how]
    print(f"batch {report.batch_id}: {how}")


def cmd_undo(args) -> int:
    _report(open_ledger(args).undo())
    return 0


def cmd_revert(args) -> int:
    _report(open_ledger(args).revert(args.id))
    return 0


def cmd_delete(args) -> int:
    open_ledger(args).delete(args.id)
    print(f"deleted batch {args.id}")
    return 0


def cmd_export(args) -> int:
    from core.patch import export_patch

    common.check_output_file(args.out, "--out")
    out = export_patch(open_ledger(args), args.ids, args.out, mode="sum" if args.sum else "per_batch")
    print(f"wrote {out} and {out}.json")
    return 0


def _replayed(args, write: bool = False):
    ledger = open_ledger(args, write=write)        # a bad workspace fails before the model loads
    handle = common.load_from_args(args)
    report = ledger.replay(handle)
    if report.batch_ids:
        print(f"replayed batches {report.batch_ids} of the workspace onto {handle.name}")
    return handle, ledger, report


def cmd_apply(args) -> int:
    from core.patch import apply_patch, read_patch

    read_patch(args.patch)                          # a missing or damaged patch fails before any work
    with common.human_to_stderr(args) as stdout:
        handle, ledger, _ = _replayed(args, write=True)
        report = apply_patch(handle, args.patch, force=args.force, ledger=ledger)
        if not report.base_hash_match:
            print("warning: the patch was made on other base weights (--force)")
        print(f"applied {report.n_batches} batch(es), {report.n_edits} edit(s), layers {report.layers}; "
              f"recorded as batch(es) {report.recorded_ids}")
        write_json(vars(report), args.json, stream=stdout)
    return 0


def cmd_replay(args) -> int:
    from core.patch import save_edited_model

    common.check_output_folder(args.save_dir, "--save")
    with common.human_to_stderr(args) as stdout:
        handle, ledger, report = _replayed(args)
        if not report.batch_ids:
            print(f"no applied batches for {handle.name} (weights {handle.base_hash[:12]}) in {ledger.root}")
        elif report.matches_recorded is not None:
            print("the replayed weights " + ("match" if report.matches_recorded else "DO NOT match")
                  + " the weights recorded when the batches were applied")
        if args.save_dir:
            save_edited_model(handle, args.save_dir, note={"batches": report.batch_ids})
            print(f"saved the edited model to {args.save_dir}")
        write_json(vars(report), args.json, stream=stdout)
    return 0


# ---- compare / scale ----------------------------------------------------------------------------

def _setup(args):
    """(handle, base MEMIT hparams, {method: hparams}, methods, references, progress)."""
    from core.errors import BadInputError
    from core.ft import ft_hparams
    from core.genmetrics import ReferenceCorpus
    from core.hparams import is_demo
    from core.rome import rome_hparams
    from core.scaling import check_methods
    from workbench.cli.common import TqdmProgress
    from workbench.cli.edit import hparams_from_args

    methods = check_methods(args.methods.split(","))
    if args.ft_lr is not None and not (math.isfinite(args.ft_lr) and args.ft_lr > 0):
        raise BadInputError(f"the learning rate must be a finite number > 0, got {args.ft_lr}", field="ft-lr")
    if args.gen_sample < 0:
        raise BadInputError(f"must be ≥ 0 (0 skips GE/RS), got {args.gen_sample}", field="gen-sample")
    handle = common.load_from_args(args)
    options = {k: None for k in ("v_steps", "clamp_norm_factor", "kl_factor", "corpus", "n_samples", "batch_size",
                                 "n_context")}
    base = hparams_from_args(handle, argparse.Namespace(**vars(args), method="memit", **options))
    per = {"rome": rome_hparams(handle, args.rome_layer, base)}
    ft = ft_hparams(handle, base)
    per["ft"] = dataclasses.replace(ft, layer=args.ft_layer if args.ft_layer is not None else ft.layer,
                                    lr=args.ft_lr if args.ft_lr is not None else ft.lr)   # validated again
    references = ReferenceCorpus.from_world() if is_demo(handle) and args.gen_sample > 0 else None
    return handle, base, per, methods, references, TqdmProgress()


def _print_rows(df) -> None:
    print_table(df, ["method", "n", "ES", "PS", "NS", "S", "new_top1", "GE", "RS", "stored", "seconds", "layers"])


def cmd_compare(args) -> int:
    from core.requests import read_requests
    from core.scaling import compare_methods
    from workbench.cli.edit import true_object_note

    requests = read_requests(args.edits)
    handle, base, per, methods, refs, progress = _setup(args)
    comp = compare_methods(handle, requests, methods, hparams=per, base_hparams=base,
                           gen_sample=args.gen_sample, references=refs, progress=progress,
                           exclude_edited_neighbours=not args.all_neighbours)
    progress.close()
    table = comp.table.copy()        # + new_top1: whether the edit took, also without true objects
    table["new_top1"] = [100 * float(comp.per_edit[m]["new_top1"].mean())
                         if m in comp.per_edit and "new_top1" in comp.per_edit[m] else math.nan
                         for m in table["method"]]
    write_json({"model": handle.name, "n": len(requests), "methods": methods,
                "rows": table.to_dict(orient="records"),
                "hparams": {m: (r.hparams) for m, r in comp.results.items()},
                "notes": {m: r.notes for m, r in comp.results.items()}}, args.json)
    if args.json != "-":
        _print_rows(table)
        note = true_object_note(requests)
        if note:
            print(f"note: {note}")
    if args.png:
        from workbench.charts.export import write_png
        from workbench.charts.scaling import comparison_bars

        write_png(comparison_bars(comp.table), args.png)
    return 0


def cmd_scale(args) -> int:
    from core.errors import BadInputError
    from core.scaling import demo_pool, run_scaling

    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise BadInputError(f"'{args.sizes}' is not a list of numbers like 1,10,100", field="sizes") from None
    pool = demo_pool(max(sizes) if sizes else None, args.dataset)
    handle, base, per, methods, refs, progress = _setup(args)
    df = run_scaling(handle, pool, sizes, methods, hparams=per, base_hparams=base, gen_sample=args.gen_sample,
                     references=refs, progress=progress, exclude_edited_neighbours=not args.all_neighbours)
    progress.close()
    write_json({"model": handle.name, "sizes": sizes, "methods": methods, "rows": df.to_dict(orient="records"),
                "hparams": {"memit": base.to_dict(), "rome": per["rome"].to_dict(), "ft": per["ft"].to_dict()}},
               args.json)
    if args.json != "-":
        _print_rows(df)
    if args.png:
        from workbench.charts.export import write_png
        from workbench.charts.scaling import scaling_figure

        write_png(scaling_figure(df), args.png)
    return 0
