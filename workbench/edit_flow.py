"""The Edit page's plumbing: table rows ⇄ edit requests, example batches, and one edit run.

No math here: a run calls core in order — metrics before, the editing method, apply + record in
the ledger, metrics after, before/after generations — and packs the results into a `RunRecord`
for the Results page. The whole run holds the model lock, so another browser session's trace or
edit cannot slip in between "before" and "after".
"""

from __future__ import annotations

import dataclasses
import os
import time

import pandas as pd

from core.requests import EditRequest, RowProblem, requests_from_rows, validate_requests
from workbench.state import DRAFT_COLUMNS, RunRecord

LIST_COLUMNS = ("paraphrase_prompts", "neighborhood_prompts", "generation_prompts")
METHOD_LABELS = {"memit": "MEMIT", "rome": "ROME (sequential)", "ft": "FT-W (fine-tuning)"}
GENERATION_EDITS = 10   # before/after generations for at most this many edits of a batch
UPLOAD_ENV = "WORKBENCH_MAX_UPLOAD_MB"   # set by `workbench app --max-upload-mb`


def request_upload_mb(server_mb: int) -> int:
    """The size limit (MB) of edit-request files: `workbench app --max-upload-mb`, passed as
    $WORKBENCH_MAX_UPLOAD_MB (the server itself may take larger patches), else the server's limit."""
    raw = os.environ.get(UPLOAD_ENV, "").strip()
    try:
        mb = int(raw)
    except ValueError:
        return server_mb
    return min(mb, server_mb) if mb > 0 else server_mb


# ---- rows ⇄ requests ------------------------------------------------------------------------

def request_to_row(req: EditRequest, relation: str = "") -> dict:
    row = {"subject": req.subject, "relation": relation, "prompt": req.prompt,
           "target_new": req.target_new, "target_true": req.target_true or ""}
    for k in LIST_COLUMNS:
        row[k] = " | ".join(getattr(req, k))
    return row


def blank(row: dict) -> bool:
    return not any(str(row.get(c) or "").strip() for c in DRAFT_COLUMNS)


def editor_frame(rows: list[dict]) -> pd.DataFrame:
    """The edit table as the data editor shows it: its index is the row number problems name (1..n)."""
    frame = pd.DataFrame(rows, columns=DRAFT_COLUMNS, dtype=str)
    frame.index = pd.RangeIndex(1, len(frame) + 1)
    return frame


def rows_moved(base: pd.DataFrame, table: pd.DataFrame) -> bool:
    """Rows were added or deleted in the editor: the index it shows no longer reads 1..n (a typed
    row has no number yet, a deleted one leaves a gap), so the table must be renumbered."""
    return table.index.tolist() != base.index.tolist()


def check_rows(rows: list[dict], handle) -> tuple[list[EditRequest], list[RowProblem], list[str]]:
    """Table rows → (requests, problems, warnings), every row named by its number in the table.

    Blank rows (the data editor's fresh line) are ignored. With a handle, the tokenizer checks
    run too (targets that tokenise to nothing, subjects not in the prompt, prompt too long).
    """
    kept = [(i + 1, r) for i, r in enumerate(rows) if not blank(r)]
    numbers = [n for n, _ in kept]
    filled = [{c: r.get(c) or "" for c in DRAFT_COLUMNS} for _, r in kept]   # an empty cell: "empty"
    reqs, problems = requests_from_rows(filled, numbers=numbers)
    warnings: list[str] = []
    if reqs and not problems:          # every row became a request, in order: same numbers
        report = validate_requests(reqs, handle.tokenizer, handle.max_length, numbers=numbers)
        problems, warnings, reqs = report.problems, report.warnings, report.requests
    return (reqs if not problems else []), problems, warnings


def example_rows(n: int, seed: int = 0) -> list[dict]:
    """n counterfactual edits from the demo world (one per subject), with the CounterFact
    paraphrase and neighbourhood prompts that the metrics need."""
    from core.request_files import load_dataset_requests
    from core.world_io import example_requests, world_dir

    cases, _ = load_dataset_requests(world_dir() / "counterfact.json")
    by_key = {(r.subject, r.prompt, r.target_new): r for r in cases}
    rows = []
    for ex in example_requests(n, seed=seed):
        req = by_key.get((ex["subject"], ex["prompt"], ex["target_new"]))
        row = request_to_row(req, ex["relation"]) if req else {**ex}
        rows.append(row)
    return rows


# ---- one run --------------------------------------------------------------------------------

def default_hparams(handle, method: str, layers: list[int] | None):
    """MEMIT hyperparameters for this model with the layers chosen on the trace page. ROME and
    FT-W take the same object: ROME edits the middle layer of R, FT-W trains the last one."""
    from core.hparams import preset_for

    return preset_for(handle, layers=layers)


def layers_line(method: str, layers: list[int], from_trace: bool) -> str:
    """Which layers a run of `method` will write, said where the Run button is (R itself sits in
    the closed Hyperparameters expander): ROME takes the middle layer of R, FT-W the last."""
    from core.rome import rome_layer

    R = sorted(int(x) for x in layers)
    origin = " (from the causal trace)" if from_trace else " (the preset for this model)"
    if not R:
        return "No layers chosen: pick R under Hyperparameters."
    if method == "rome":
        return f"ROME will edit layer {rome_layer(R)}, the middle of R = {R}{origin}."
    if method == "ft":
        return f"FT-W will fine-tune layer {max(R)}, the last of R = {R}{origin}."
    return f"MEMIT will edit layers R = {R}{origin}."


def run_edit(handle, requests: list[EditRequest], method: str, hparams, ledger, key: tuple,
             progress=None) -> RunRecord:
    """Metrics before → edit → apply + record → metrics after → generations. Atomic per core."""
    from core.editing import METHODS
    from core.genmetrics import before_after_generations
    from core.metrics import counterfact_scores, summarize

    t0 = time.perf_counter()
    with handle.lock:
        pre = counterfact_scores(handle, requests, progress=progress)
        result = METHODS[method](handle, requests, hparams, progress=progress)
        applied, record = ledger.apply_and_record(handle, result)
        post = counterfact_scores(handle, requests, progress=progress)
        if progress:
            progress(0, 1, "generations")
        shown = dataclasses.replace(applied, result=dataclasses.replace(
            result, requests=list(result.requests)[:GENERATION_EDITS]))
        gens = before_after_generations(handle, shown, modes=("greedy", "sampled"), n_neighbours=1)
        if progress:
            progress(1, 1, "generations")
    summary = {f"pre_{k}": v for k, v in summarize(pre).items()}
    summary.update({f"post_{k}": v for k, v in summarize(post).items()})
    ledger.update_metrics(record.id, summary)
    return RunRecord(method=method, requests=list(result.requests), result=result, applied=applied,
                     metrics_pre=pre, metrics_post=post, generations=gens, batch_id=record.id,
                     model_key=key, seconds=time.perf_counter() - t0)


OUTPUT_CHANGE_LIMIT = 0.2   # RMS change of a layer's output on ordinary text, relative


def size_warning(result, limit: float = 1.0, output_limit: float = OUTPUT_CHANGE_LIMIT) -> str | None:
    """A warning when the edit is large enough to damage other knowledge.

    With key statistics (MEMIT, ROME) the measure is `output_change`: how much a layer's output on
    the corpus changes, relative to itself (> `output_limit`); without them (FT-W) ‖ΔW‖/‖W‖ >
    `limit`.
    """
    changes = getattr(result, "output_change", None) or {}
    if changes:
        layer, worst = max(changes.items(), key=lambda kv: kv[1])
        if worst <= output_limit:
            return None
        return (f"Layer {layer}'s output on ordinary text changes by {100 * worst:.0f} % (RMS over "
                "the corpus keys C): an edit this large usually damages other knowledge. Try other "
                "layers R (the Causal trace page suggests them) or a larger λ.")
    worst = max(result.relative_norms.values(), default=0.0)
    if worst <= limit:
        return None
    return (f"One layer changed by {100 * worst:.0f} % of its own norm: an edit this large usually "
            "damages other knowledge. Try other layers R (the Causal trace page suggests them) "
            "or a larger λ.")


def size_note(result, limit: float = 1.0, output_limit: float = OUTPUT_CHANGE_LIMIT) -> str | None:
    """Why a large ‖ΔW‖/‖W‖ can be harmless: the layer whose ‖ΔW‖ exceeds `limit` × ‖W‖ while its
    output on the corpus changes little (the update sits in key directions the corpus hardly
    activates, where C is nearly singular and Eq. 14 charges almost nothing)."""
    changes = getattr(result, "output_change", None) or {}
    big = [(l, r) for l, r in result.relative_norms.items()
           if r > limit and l in changes and changes[l] <= output_limit]
    if not big:
        return None
    layer, rel = max(big, key=lambda kv: kv[1])
    return (f"‖ΔW‖ of layer {layer} is {rel:.3g} × ‖W‖, yet its output on ordinary text changes by "
            f"only {100 * changes[layer]:.1f} %: most of the update lies in key directions the "
            "corpus hardly activates (there C is nearly zero, so Eq. 14 charges almost nothing for "
            "it). Text that does activate them would change more; another R or more covariance "
            "samples avoid that.")


CAPACITY_HELP = (
    "MEMIT stores each edit as a key → value pair in W_out: the key is the MLP's hidden activation "
    "at the subject's last token. Eq. 14 can keep an edit only as far as its key stands apart from "
    "the batch's other keys (measured by the key covariance C and λ). This check reads the keys "
    "of this batch — no editing — and gives the share of an independent change each edit would "
    "keep (1 = all) and the smallest eigenvalue of M = Kᵀ C⁻¹ K/λ (keys as columns); both fall "
    "as a batch fills the layer. Keys are read on the unedited model. To see what a wider layer "
    "would hold, the CLI's `workbench capacity --extra-keys N` adds N key dimensions without "
    "changing what the model computes. The demo model ships 6,144 such extra key dimensions at "
    "layer 0 (its key room): 1,000 edits keep 97 % there, 76 % without.")


def capacity_signature(requests, hparams) -> tuple:
    """What a capacity table depends on: the batch's prompts and subjects, R, λ and C's corpus."""
    return (tuple((r.prompt, r.subject) for r in requests), tuple(hparams.layers),
            float(hparams.mom2_weight), hparams.corpus, int(hparams.n_samples))


def capacity_table(handle, requests, hparams, progress=None) -> pd.DataFrame:
    """How full each layer of R would be with this batch (`core.capacity`), one row per layer."""
    from core.capacity import capacity_curve

    rows = capacity_curve(handle, requests, hparams, [len(requests)], progress=progress)
    return pd.DataFrame([{"layer": r.layer, "edits": r.n, "λ": r.lam, "stored (median)": r.stored_median,
                          "stored (worst 10 %)": r.stored_p10, "smallest eigenvalue of M": r.eig_min}
                         for r in rows])


def capacity_warning(result, limit: float = 0.7) -> str | None:
    """A warning when, for the median edit, some layer's update wrote less than `limit` of its
    share of the residual on the edit's own key (MEMIT's `stored_fraction`)."""
    low = {layer: f for layer, f in result.stored_fraction.items() if f < limit}
    if not low:
        return None
    layer, f = min(low.items(), key=lambda kv: kv[1])
    return (f"Layer {layer} stored only {100 * f:.0f} % of its share of the change for the median "
            "edit: the batch's keys crowd the layer's key space (Eq. 14 has to trade them against "
            "each other and against λ·C), so edits take less and leak more. Edit fewer facts at "
            "once, add layers to R, or lower λ.")


def generation_entropy(gens: pd.DataFrame, column: str) -> float:
    """GE (Appendix C.2) of the sampled generations about the edited subjects."""
    from core.genmetrics import generation_entropy as ge

    texts = gens[(gens["mode"] == "sampled") & (gens["kind"] == "subject")][column].tolist()
    return ge(texts) if texts else float("nan")


def metrics_table(run: RunRecord) -> pd.DataFrame:
    """Pre vs post summary (ES/PS/NS/S in percent, GE in bits): one row per metric."""
    from core.metrics import summarize

    pre, post = summarize(run.metrics_pre), summarize(run.metrics_post)
    names = {"ES": "Efficacy success ES (%)", "PS": "Paraphrase success PS (%)",
             "NS": "Neighbourhood success NS (%)", "S": "Score S (%)",
             "new_top1": "New object is top-1 (%)",
             "NS_outside": "NS, neighbours the batch does not edit (%)"}
    rows = [{"metric": label, "before": pre.get(k), "after": post.get(k)} for k, label in names.items()]
    rows.append({"metric": f"Generation entropy GE (bits, {GENERATION_EDITS} edits at most)",
                 "before": generation_entropy(run.generations, "before"),
                 "after": generation_entropy(run.generations, "after")})
    return pd.DataFrame(rows)


def column_config() -> dict:
    """The edit table's columns, with the science in the tooltips."""
    import streamlit as st

    text = st.column_config.TextColumn
    return {
        "_index": st.column_config.NumberColumn("Row", disabled=True, help="The row number that "
                                                "problems and warnings name."),
        "subject": text("Subject", help="The entity the fact is about, exactly as it appears in the "
                        "prompt (e.g. 'Clara Joan Whitlow'). MEMIT reads it at its last token."),
        "relation": text("Relation", help="A relation name of the demo world (sport, occupation, "
                         "birthplace, …) — used when no prompt template is given."),
        "prompt": text("Prompt template", help="The fact as a sentence start with '{}' where the "
                       "subject goes, e.g. '{} plays the sport of'."),
        "target_new": text("New object", help="What the model should answer after the edit."),
        "target_true": text("True object (optional)", help="What the model answers now; needed "
                            "for the efficacy / paraphrase / neighbourhood scores."),
        "paraphrase_prompts": text("Paraphrases", help="Optional: rephrased prompts with the subject "
                                   "filled in, separated by '|' (generalisation test)."),
        "neighborhood_prompts": text("Neighbours", help="Optional: prompts about *other* subjects "
                                     "with the same true object, separated by '|' (specificity test)."),
        "generation_prompts": text("Generation prompts", help="Optional: prompts for free text "
                                   "generation about the subject, separated by '|'."),
    }


METHOD_NOTES = {
    "memit": "MEMIT spreads the batch over every layer of R.",
    "rome": "ROME edits one layer — the middle layer of R — one fact after another.",
    "ft": "FT-W fine-tunes W_out of one layer — the last layer of R — with weight decay.",
}


def hparam_fields(method: str) -> list[tuple[str, str, str]]:
    """Hyperparameters the page exposes for a method: (field, label, help)."""
    if method == "ft":
        return []
    fields = [
        ("mom2_weight", "λ (covariance weight)", "Eq. 15: C₀ = λ·E[kkᵀ]. Larger λ protects what the "
         "layer already stores; smaller λ makes the new facts win harder."),
        ("v_steps", "Steps for zᵢ", "Adam steps optimising each target vector zᵢ (Eq. 16)."),
        ("v_lr", "Learning rate for zᵢ", "Adam learning rate of δᵢ = zᵢ − hᵢᴸ."),
        ("clamp_norm_factor", "Clamp ‖δᵢ‖ / ‖hᵢᴸ‖", "Keeps each change small relative to the hidden state."),
        ("kl_factor", "KL weight", "Keeps what the model says about the subject in general "
         "('… is a') close to before."),
        ("n_samples", "Corpus samples for C", "Text records used to estimate the key covariance "
         "E[kkᵀ] (cached on disk after the first run)."),
        ("n_context", "Context prefixes for zᵢ", "Short texts the model writes itself, put before "
         "each prompt while zᵢ is optimised (Eq. 16), so the new fact holds after other text too. "
         "More prefixes generalise better to paraphrases and take longer."),
    ]
    return [f for f in fields if not (method == "rome" and f[0] == "mom2_weight")]
