"""The demo model's model card (assets/demo-model/README.md), written from measured numbers."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.demo_recall import Recall, TokenEffects

# Hand-written sections (experiment grids, earlier models) that a retrain carries over from the
# old card; every other section is regenerated from measured numbers.
KEPT_HEADINGS = ("## Key room", "## Reading the trace", "## Hyperparameter grid", "## Earlier models")


def _row(name: str, values: list[float]) -> str:
    return f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |"


def _names_line(world_summary: dict) -> str:
    k = world_summary.get("people_per_prefix", 2)
    if k is None:
        return ("- Names: people have three-part names with shared first and middle names and an "
                "invented surname of their own, so the last name token identifies the person; every "
                "name part is one token.")
    return (f"- Names: people have three-part names whose first + middle prefix is shared by {k} "
            "people, so only the last name token identifies the person; every name part is one token.")


def kept_sections(old_card: str) -> str:
    """The sections of an existing card whose heading starts with one of KEPT_HEADINGS."""
    parts = re.split(r"(?m)^(?=## )", old_card)
    return "\n".join(p.rstrip() + "\n" for p in parts if p.startswith(KEPT_HEADINGS))


def averaged_trace_section(avg: dict, command: str) -> list[str]:
    """Lines for the averaged trace (`core.trace_avg.AveragedTrace.to_dict()`)."""
    L = avg["n_layers"]
    eff = avg["effects"]
    rows = [("MLP", "mlp", "first_subject", "first subject"), ("MLP", "mlp", "middle_subject", "middle subject"),
            ("MLP", "mlp", "last_subject", "last subject"), ("MLP", "mlp", "last", "last token"),
            ("attention", "attn", "last", "last token"), ("hidden", "hidden", "last_subject", "last subject"),
            ("hidden", "hidden", "last", "last token")]
    s = avg["settings"]
    lines = [f"## Causal trace, averaged (`{command}`)", "",
             f"{avg['n_facts']} known facts of `assets/world/knowns.json` ({avg['n_skipped_wrong']} skipped: "
             f"answered wrongly), noise {s['noise']:g} × σ, {s['samples']} samples, window {s['window']} "
             f"(clean {avg['clean_prob']:.3f}, corrupted {avg['corrupted_prob']:.3f}), average indirect "
             "effect per layer:", "",
             "| kind, token | " + " | ".join(str(i) for i in range(L)) + " |", "|---" * (L + 1) + "|"]
    lines += [_row(f"{label}, {tok}", eff[k][c]) for label, k, c, tok in rows if k in eff]
    lines.append("")
    mlp_last = eff.get("mlp", {}).get("last_subject")
    if mlp_last is not None:
        others = [max(eff["mlp"][c]) for c in ("first_subject", "middle_subject") if c in eff["mlp"]]
        peak = max(range(L), key=lambda i: mlp_last[i])
        lines += [f"The last-subject MLP effect peaks at layer {peak} ({mlp_last[peak]:.3f}); the other "
                  f"subject tokens reach at most {max(others):.3f}.", ""]
    if "severed" in avg:
        sev = avg["severed"]
        gap_peak = max(range(L), key=lambda i: sev["gap"][i])
        lines += ["Severed paths at the last subject token (hidden state restored at layer l, indirect effect):", "",
                  "| path | " + " | ".join(str(i) for i in range(L)) + " |", "|---" * (L + 1) + "|",
                  _row("normal", sev["normal"]), _row("MLPs frozen", sev["mlp_severed"]),
                  _row("attention frozen", sev["attn_severed"]), _row("gap (normal − MLPs frozen)", sev["gap"]),
                  "", f"Largest MLP-severed gap {sev['gap'][gap_peak]:.3f} at layer {gap_peak}. "
                  f"Suggested R = {avg['suggested_layers']}.", ""]
    return lines


def memit_section(ev: dict, command: str, extra_keys: int = 0) -> list[str]:
    """Lines for one evaluation (`core.evaluation.EditEvaluation.to_dict()`); `extra_keys`: the key
    room the model had (units added at layer 0 at load)."""
    hp = ev["hparams"]
    key_room = f", with the key room ({extra_keys:,} extra key dimensions at layer 0)" if extra_keys else ""

    def row(name: str, scores: dict) -> str:
        return f"| {name} | " + " | ".join(f"{scores[k]:.1f}" for k in ("ES", "PS", "NS", "S")) + " |"

    return [f"## MEMIT on this model (`{command}`)", "",
            f"The first {ev['n']} CounterFact cases of `assets/world/counterfact.json`, edited at once with "
            f"the demo preset (`core/hparams.py`): R = {ev['layers']}, λ {hp['mom2_weight']:g}, "
            f"{hp['v_steps']} z steps, {hp['n_context']} context prefixes, lr {hp['v_lr']:g}, clamp {hp['clamp_norm_factor']:g} · ‖h‖, KL factor "
            f"{hp['kl_factor']:g}, weight decay {hp['v_weight_decay']:g}, C from {hp['n_samples']:,} corpus "
            f"records{key_room}; scores in % (paper, Appendix C).",
            "", "| | ES | PS | NS | S |", "|---|---|---|---|---|", row("before", ev["pre"]), row("after", ev["post"]),
            "", f"Edit time {ev['seconds']['edit']:.1f} s on CPU.", ""]


def model_card(result, recall: Recall, effects: TokenEffects, world_summary: dict, *,
               trace: dict | None = None, memit: dict | None = None, kept: str = "") -> str:
    """Markdown card: recipe, sizes, training log, recall per relation, trace check, and when
    given the averaged trace (`trace`), a MEMIT evaluation (`memit`) and kept hand-written sections."""
    cfg = asdict(result.config)
    on_cpu = cfg.get("device", "cpu") == "cpu"
    model = result.model
    n_params = sum(p.numel() for p in model.parameters())
    L = len(effects.last)
    peak = max(range(L), key=lambda i: effects.last[i])
    log = result.log
    picks = sorted({0, len(log) // 4, len(log) // 2, 3 * len(log) // 4, len(log) - 1})
    by = recall.by_relation
    lines = [
        "---",
        "license: mit",
        "library_name: transformers",
        "tags: [gpt2, synthetic, causal-tracing, memit, demo]",
        "---",
        "",
        "# MEMIT Workbench demo model",
        "",
        "A small GPT-2 (`GPT2LMHeadModel`, own byte-level BPE) trained from scratch on the "
        "workbench's synthetic *demo knowledge world* (`assets/world/`), so causal tracing and "
        "MEMIT can be shown offline. It knows only that world: invented people, companies, "
        "countries and cities. Rebuild with `workbench demo build-world && workbench demo train`.",
        "",
        "## Sizes",
        "",
        f"- {cfg['n_layer']} layers, d_model {cfg['n_embd']}, {cfg['n_head']} heads, "
        f"d_mlp {cfg.get('n_inner') or 4 * cfg['n_embd']}, context {cfg['n_positions']}, vocabulary {model.config.vocab_size}, "
        f"{n_params:,} parameters (tied input/output embeddings), float32."
        + (f" At load, `key_room.json` adds {cfg.get('key_room')} dormant units to the MLP of layer 0 "
           f"(d_mlp {(cfg.get('n_inner') or 4 * cfg['n_embd']) + cfg.get('key_room')} there; see Key room)."
           if cfg.get("key_room") else ""),
        f"- World (seed {world_summary['seed']}): {world_summary['n_facts']} facts, "
        f"{world_summary['n_subjects']} subjects, {world_summary['n_relations']} relations.",
        "",
        "## Recipe",
        "",
        "- Text per epoch (a fresh seeded draw of `core.world.documents`): one biography per "
        "subject (first sentence names the subject, later ones mostly use she/he/it), every fact "
        "once as a plain sentence with a random *training* template, and once as a tag line "
        "(`sport: Greta Paul Roxwell rowing.`) that puts the object right after the last subject "
        "token; filler sentences in 15 % of documents.",
        _names_line(world_summary),
        f"- Curriculum mask: in {cfg['mask_p']:.0%} of documents, positions after a subject mention "
        "attend only to its last token (not its earlier tokens)"
        + (f"; in blocks 0-{cfg['early_blocks'] - 1} not even to that token, so the fact must be "
           "read from the subject's state after those blocks" if cfg.get("early_blocks") else "")
        + ". The saved model is a plain GPT-2.",
        f"- AdamW (β = 0.9, 0.98, weight decay {cfg['weight_decay']}), lr {cfg['lr']} with "
        f"{cfg['warmup_steps']} warm-up steps and cosine decay to 5 %, batch {cfg['batch_size']} "
        f"documents, {cfg['epochs']} epochs, gradient clip 1.0, no dropout, seed {cfg['seed']}, "
        + (f"{cfg['threads']} CPU thread(s)." if on_cpu else f"device {cfg['device']}."),
        f"- Training time: {result.seconds / 60:.1f} min on " + ("CPU." if on_cpu else f"{cfg['device']}."),
        "",
        "Training loss (mean per epoch): "
        + ", ".join(f"epoch {log[i]['epoch']}: {log[i]['loss']:.3f}" for i in picks) + ".",
        "",
        "## Recall (top-1, greedy decoding gives the whole object)",
        "",
        f"All {recall.n_facts} facts: **{recall.train_top1:.1%}** on training templates, "
        f"**{recall.heldout_top1:.1%}** on held-out paraphrase templates (never in the training text).",
        "",
        "| relation | train | held-out | facts |",
        "|---|---|---|---|",
        *[f"| {r.relation} | {r.train_top1:.3f} | {r.heldout_top1:.3f} | {r.n_facts} |"
          for r in by.itertuples(index=False)],
        "",
        "## Causal trace check (plain PyTorch hooks, `core.demo_recall.subject_token_effects`)",
        "",
        f"{effects.n} known facts (`assets/world/knowns.json`, canonical templates). Subject "
        "embeddings corrupted with Gaussian noise of 3 × the std of subject-token embeddings "
        "(4 samples); clean MLP outputs restored in a window of 3 layers centred on each layer, at "
        "one token. Average indirect effect on the probability of the answer's first token "
        f"(clean {effects.p_clean:.3f}, corrupted {effects.p_corrupt:.3f}):",
        "",
        "| token \\ layer | " + " | ".join(str(i) for i in range(L)) + " |",
        "|---" * (L + 1) + "|",
        _row("first subject", effects.first),
        _row("middle subject", effects.middle),
        _row("last subject", effects.last),
        _row("last prompt token", effects.after),
        "",
        f"The last-subject-token MLP effect peaks at layer {peak} of {L} "
        f"({effects.last[peak]:.3f}; first subject token at most {max(effects.first):.3f}, middle "
        f"at most {max(effects.middle):.3f}).",
        "",
        *(averaged_trace_section(trace, "workbench trace-avg --n 100 --kind all --samples 3") if trace else []),
        *(memit_section(memit, "workbench eval --n 100", cfg.get("key_room", 0)) if memit else []),
        *([kept.rstrip(), ""] if kept.strip() else []),
        "## Limits",
        "",
        f"A toy: it knows the {world_summary['n_facts']:,} invented facts of its world and the few "
        "hundred words of that world's sentences; it cannot write general English. Facts are "
        "looked up in the *early* MLPs (layers 0-1) of the last subject token, not in the middle "
        "of a deep stack as in GPT-2 XL. Use it to learn the workbench, then load a real model "
        "(`--model gpt2-xl`).",
        "",
    ]
    return "\n".join(lines)
