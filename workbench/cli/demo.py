"""`workbench demo build-world | train | recall`: the embedded demo world and model."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.demo_card import KEPT_HEADINGS
from workbench.cli.common import add_json_arg, add_model_args, load_from_args, write_json


def register(sub) -> None:
    p = sub.add_parser("demo", help="build the demo world, train the demo model, measure its recall",
                       description="The embedded demo: a seeded synthetic knowledge world "
                       "(assets/world/) and a small GPT-2 trained on it (assets/demo-model/).")
    dsub = p.add_subparsers(dest="demo_command", metavar="STEP")

    b = dsub.add_parser("build-world", help="generate the world files (facts, relations, "
                        "CounterFact cases, knowns, corpus)")
    b.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    b.add_argument("--out", default=None, help="output folder (default assets/world/)")
    add_json_arg(b)
    b.set_defaults(handler=cmd_build_world)

    t = dsub.add_parser("train", help="train the demo model on the world (2 CPU threads: ~43 min)")
    t.add_argument("--world", default=None, help="world folder (default assets/world/)")
    t.add_argument("--out", default=None, help="output folder (default assets/demo-model/)")
    t.add_argument("--seed", type=int, default=None, help="training seed (default 0)")
    t.add_argument("--epochs", type=int, default=None, help="passes over the world text")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 2, as the shipped model)")
    t.add_argument("--n-layer", type=int, default=None, help="transformer blocks (default 8)")
    t.add_argument("--n-inner", type=int, default=None,
                   help="MLP width = MEMIT's key dimensions per layer (default 2048; wider stores more edits "
                        "per layer, see the model card's capacity section)")
    t.add_argument("--key-room", type=int, default=None, metavar="N",
                   help="dormant MLP units added to layer 0 at load (key_room.json; default 6144, 0 = none): "
                        "MEMIT's room for ~1,000 edits at once, the model computes the same")
    t.add_argument("--device", default=None,
                   help="train on this torch device, e.g. cuda (default cpu; the model is saved for CPU)")
    t.add_argument("--quick", action="store_true",
                   help="skip the averaged causal trace and the MEMIT evaluation of the model card (~5 min)")
    add_json_arg(t)
    t.set_defaults(handler=cmd_train)

    c = dsub.add_parser("card", help="re-measure a trained demo model and rewrite its model card",
                        description="Rewrite MODEL_DIR/README.md from measured numbers (recall, trace "
                        "check, averaged trace, MEMIT at n = 100 with the demo preset) without retraining; "
                        "the card's hand-written sections (" + ", ".join(h[3:] for h in KEPT_HEADINGS)
                        + ") are kept.")
    c.add_argument("--model-dir", default=None, help="trained model folder (default assets/demo-model/)")
    c.add_argument("--world", default=None, help="world folder (default assets/world/)")
    c.add_argument("--quick", action="store_true", help="skip the averaged trace and the MEMIT evaluation")
    add_json_arg(c)
    c.set_defaults(handler=cmd_card)

    r = dsub.add_parser("recall", help="top-1 recall of the world's facts on training and "
                        "held-out templates")
    r.add_argument("--world", default=None, help="world folder (default assets/world/)")
    r.add_argument("--max-facts", type=int, default=None, help="sample this many facts (default all)")
    add_model_args(r)
    add_json_arg(r)
    r.set_defaults(handler=cmd_recall)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def cmd_build_world(args: argparse.Namespace) -> int:
    from core.world import build_world
    from core.world_io import write_world

    world = build_world(seed=args.seed)
    out = write_world(world, args.out)
    summary = {"dir": str(out), "seed": args.seed, "n_facts": len(world.facts),
               "n_cases": len(world.counterfact), "n_knowns": len(world.knowns),
               "corpus_chars": len(world.corpus)}
    write_json(summary, args.json)
    if args.json != "-":
        print(f"wrote {out}: {summary['n_facts']} facts, {summary['n_cases']} CounterFact cases, "
              f"{summary['n_knowns']} knowns, corpus {summary['corpus_chars']:,} characters")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import torch

    from core.demo_train import TrainConfig, save_demo_model, train_demo_model
    from core.errors import BadInputError
    from core.model import demo_model_dir
    from core.world_io import load_world, world_dir

    world = load_world(args.world)
    cfg = TrainConfig()
    for name in ("seed", "epochs", "threads", "n_layer", "n_inner", "device", "key_room"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    for name in ("epochs", "threads", "n_layer", "n_inner"):
        if getattr(cfg, name) < 1:
            raise BadInputError(f"must be at least 1, got {getattr(cfg, name)}", field=name.replace("_", "-"))
    if cfg.key_room < 0:
        raise BadInputError(f"must be 0 or more, got {cfg.key_room}", field="key-room")
    try:
        torch.device(cfg.device)
    except RuntimeError:
        raise BadInputError(f"not a torch device: {cfg.device!r} (e.g. cpu, cuda, cuda:1)", field="device") from None
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError(f"device {cfg.device} asked for, but torch sees no CUDA device", field="device")
    bar = tqdm(total=None, unit="step")

    def progress(done: int, total: int, phase: str) -> None:
        bar.total = total
        bar.update(done - bar.n)

    result = train_demo_model(world, cfg, progress=progress)
    bar.close()
    out = save_demo_model(result, args.out or demo_model_dir())
    result_json = write_card(result, out, world, args.world or world_dir(), quick=args.quick)
    write_json(result_json, args.json)
    if args.json != "-":
        print(f"saved {out} after {result.seconds:.1f} s; recall train {result_json['train_top1']:.3f}, "
              f"held-out {result_json['heldout_top1']:.3f} on {result_json['n_facts']} facts")
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from core.demo_train import load_train_result
    from core.model import demo_model_dir
    from core.world_io import load_world, world_dir

    model_dir = Path(args.model_dir) if args.model_dir else demo_model_dir()
    result = load_train_result(model_dir)
    world = load_world(args.world)
    result_json = write_card(result, model_dir, world, args.world or world_dir(), quick=args.quick)
    write_json(result_json, args.json)
    if args.json != "-":
        print(f"wrote {model_dir / 'README.md'}")
    return 0


def write_card(result, out: Path, world, world_folder, *, quick: bool) -> dict:
    """Measure the trained model and (re)write its card `out/README.md`, keeping the old card's
    hand-written sections; returns the measured numbers."""
    from core.demo_card import kept_sections, model_card
    from core.demo_recall import measure_recall, subject_token_effects

    card_path = Path(out) / "README.md"
    kept = kept_sections(card_path.read_text(encoding="utf-8")) if card_path.is_file() else ""
    print("measuring recall and the trace check for the model card …", flush=True)
    recall = measure_recall(result.model, result.tokenizer, world.facts, world.relations)
    effects = subject_token_effects(result.model, result.tokenizer, world.knowns[:100])
    trace = memit = None
    if not quick:
        trace, memit = card_checks(result, out, world_folder)
    summary = {"seed": world.seed, "n_facts": len(world.facts),
               "n_subjects": world.facts["subject"].nunique(), "n_relations": len(world.relations),
               "people_per_prefix": world.people_per_prefix,
               "relations_per_person": world.relations_per_person}
    card_path.write_text(model_card(result, recall, effects, summary, trace=trace, memit=memit, kept=kept),
                         encoding="utf-8")
    return {"dir": str(out), "seconds": round(result.seconds, 1), "final_loss": result.log[-1]["loss"],
            **recall.as_dict(), "trace_last_subject": effects.last, "trace_first_subject": effects.first,
            "suggested_layers": trace["suggested_layers"] if trace else None,
            "memit_n100": {"pre": memit["pre"], "post": memit["post"]} if memit else None}


def card_checks(result, model_dir, world_folder, n: int = 100) -> tuple[dict, dict]:
    """The model card's averaged trace (`trace-avg --n 100 --kind all --samples 3`) and MEMIT
    evaluation (`eval --n 100`, demo preset) of the trained model in `result` (already in memory:
    not loaded again from `model_dir`; with its key room, as it loads; the edit is reverted
    bit-exactly)."""
    import copy
    from dataclasses import replace

    from core.demo_train import key_room_manifest
    from core.evaluation import evaluate_edit
    from core.hparams import DEMO_PRESET, MemitHparams
    from core.model import wrap_model
    from core.requests import load_dataset_requests
    from core.trace_avg import average_traces, load_facts
    from core.tracing import TraceSettings
    from core.widen import apply_key_room
    from workbench.cli.common import TqdmProgress

    src = Path(world_folder)
    room = key_room_manifest(result.config) if result.config.key_room > 0 else None
    # with its key room, as `load_model` gives it, on a copy (the card's sizes are the trained weights')
    handle = wrap_model(copy.deepcopy(result.model) if room else result.model, result.tokenizer,
                        name=str(model_dir))
    if room:
        apply_key_room(handle, room)
    progress = TqdmProgress()
    try:
        avg = average_traces(handle, load_facts(src / "knowns.json"), n=n, kinds=("hidden", "mlp", "attn"),
                             settings=replace(TraceSettings(), samples=3), progress=progress)
        requests, _ = load_dataset_requests(str(src / "counterfact.json"), n)
        corpus = src / "corpus.txt"        # the world's own text for the key statistics C
        hp = MemitHparams(**{**DEMO_PRESET, "corpus": str(corpus) if corpus.is_file() else "demo"})
        ev = evaluate_edit(handle, requests, hparams=hp, progress=progress)
    finally:
        progress.close()
    return avg.to_dict(), ev.to_dict()


def cmd_recall(args: argparse.Namespace) -> int:
    from core.demo_recall import measure_recall
    from core.world_io import load_facts, load_relations

    handle = load_from_args(args)
    facts, relations = load_facts(args.world), load_relations(args.world)
    with handle.lock:
        recall = measure_recall(handle.hf, handle.tokenizer, facts, relations, max_facts=args.max_facts)
    write_json(recall.as_dict(), args.json)
    if args.json != "-":
        print(recall.by_relation.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        print(f"train_top1 {recall.train_top1:.3f}  heldout_top1 {recall.heldout_top1:.3f}  "
              f"n_facts {recall.n_facts}")
    return 0

