"""Method comparison on one batch, and scaling curves (paper §5.2.2, Figure 5).

`compare_methods` runs MEMIT, ROME and FT-W on the same requests, each on the same unedited
weights (edit → metrics → bit-exact revert), plus the unedited model as a reference row.
`run_scaling` does that for the first n requests of a pool for each n in `sizes`: Figure 5
plots ES/PS/NS/S and GE against n on a log axis, with the unedited model as the dotted line.
Every row: method, n, ES, PS, NS, S (percent), GE (bits, mean n-gram entropy of sampled text
about the first `gen_sample` subjects), RS (TF-IDF cosine ·100, when reference texts are
given), seconds (computing the edit), the ΔW norms, and for MEMIT `stored`: the median share
of its residual the most crowded layer of R could store, in percent (`EditResult.stored_fraction`; it falls
with n as the batch fills the layers' key space). NS leaves out, by default, neighbourhood
prompts about subjects the same batch edits under the same relation (their true object changes on
purpose; `core.metrics.edited_neighbours`); `neighbours_excluded` counts them. NS_outside: NS
over the neighbours the batch does not edit at all (`core.metrics.outside_neighbours`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from core.editing import METHODS, apply_edit, revert
from core.errors import BadInputError, WorkbenchError
from core.ft import ft_hparams
from core.genmetrics import generation_metrics, summarize_generation
from core.hparams import preset_for
from core.ledger_io import read_layer_hashes
from core.metrics import counterfact_scores, summarize
from core.rome import rome_hparams

DEFAULT_METHODS = ("memit", "rome", "ft")
REFERENCE = "unedited"
COLUMNS = ["method", "n", "ES", "PS", "NS", "S", "GE", "RS", "EM", "PM", "NM", "NS_outside", "seconds",
           "delta_norm", "relative_norm", "stored", "layers", "neighbours_excluded"]


@dataclass
class Comparison:
    table: pd.DataFrame                                  # one row per method (+ the unedited model)
    per_edit: dict[str, pd.DataFrame] = field(default_factory=dict)   # counterfact_scores per method
    results: dict[str, object] = field(default_factory=dict)          # EditResult per method


def method_hparams(handle, method: str, base=None):
    """Hyperparameters of `method` for this model; `base` = MEMIT hparams to derive them from."""
    if method not in METHODS:
        raise BadInputError(f"unknown method '{method}' (available: {', '.join(sorted(METHODS))})", field="methods")
    memit = base if base is not None else preset_for(handle)
    if method == "rome":
        return rome_hparams(handle, base=memit)
    if method == "ft":
        return ft_hparams(handle, memit)
    return memit


def check_methods(methods) -> list[str]:
    methods = [m.strip().lower() for m in methods if m.strip()]
    if not methods:
        raise BadInputError("choose at least one method", field="methods")
    for m in methods:
        if m not in METHODS:
            raise BadInputError(f"unknown method '{m}' (available: {', '.join(sorted(METHODS))})", field="methods")
    return methods


def evaluate(handle, requests, *, gen_sample: int = 10, references=None, max_new_tokens: int = 40,
             seed: int = 0, exclude_edited_neighbours: bool = True) -> tuple[dict, pd.DataFrame]:
    """CounterFact scores of the live model on `requests` (+ GE/RS on the first `gen_sample`)."""
    per_edit = counterfact_scores(handle, requests, exclude_edited_neighbours=exclude_edited_neighbours)
    summary = summarize(per_edit)
    if gen_sample > 0:
        gen = generation_metrics(handle, requests[:gen_sample], references=references,
                                 max_new_tokens=max_new_tokens, seed=seed)
        summary.update(summarize_generation(gen))
    else:
        summary.update(GE=float("nan"), RS=float("nan"))
    return summary, per_edit


def _row(method, n, summary, seconds=None, result=None) -> dict:
    row = {"method": method, "n": n, **{k: summary.get(k) for k in ("ES", "PS", "NS", "S", "GE", "RS", "EM", "PM", "NM",
                                                                   "NS_outside")},
           "seconds": seconds, "delta_norm": None, "relative_norm": None, "stored": None, "layers": None,
           "neighbours_excluded": summary.get("neighbours_excluded", 0)}
    if result is not None:
        row.update(delta_norm=sum(result.delta_norms.values()),
                   relative_norm=max(result.relative_norms.values()),
                   stored=(100 * min(result.stored_fraction.values())
                           if result.stored_fraction else None),                    # percent
                   layers=",".join(str(x) for x in result.layers))
    return row


def _stage(progress, label):
    if progress is None:
        return None
    return lambda done, total, phase: progress(done, total, f"{label}: {phase}")


def compare_methods(handle, requests, methods=DEFAULT_METHODS, *, hparams: dict | None = None,
                    base_hparams=None, gen_sample: int = 10, references=None, seed: int = 0,
                    cov_cache_dir=None, progress=None, reference_row: bool = True,
                    exclude_edited_neighbours: bool = True) -> Comparison:
    """Each method on the same batch and the same unedited weights (see module docstring).

    hparams: {method: hyperparameters} overriding `method_hparams(handle, m, base_hparams)`.
    The model ends bit for bit as it started; WorkbenchError if a revert did not restore it.
    """
    methods = check_methods(methods)
    requests = list(requests)
    if not requests:
        raise BadInputError("no edit requests", field="requests")
    hparams = dict(hparams or {})
    start_state = read_layer_hashes(handle, range(handle.n_layers))
    out = Comparison(table=pd.DataFrame(columns=COLUMNS))
    rows = []
    if reference_row:
        summary, out.per_edit[REFERENCE] = evaluate(handle, requests, gen_sample=gen_sample,
                                                    references=references, seed=seed,
                                                    exclude_edited_neighbours=exclude_edited_neighbours)
        rows.append(_row(REFERENCE, len(requests), summary))
    for m in methods:
        hp = hparams.get(m) or method_hparams(handle, m, base_hparams)
        t0 = time.perf_counter()
        result = METHODS[m](handle, requests, hp, progress=_stage(progress, f"{m} n={len(requests)}"),
                            cov_cache_dir=cov_cache_dir)
        seconds = time.perf_counter() - t0
        applied = apply_edit(handle, result)
        try:
            summary, out.per_edit[m] = evaluate(handle, result.requests, gen_sample=gen_sample,
                                                references=references, seed=seed,
                                                exclude_edited_neighbours=exclude_edited_neighbours)
        finally:
            revert(handle, applied)
        if read_layer_hashes(handle, range(handle.n_layers)) != start_state:
            raise WorkbenchError(f"the model did not return to its starting weights after {m}")
        out.results[m] = result
        rows.append(_row(m, len(result.requests), summary, seconds, result))
    out.table = pd.DataFrame(rows, columns=COLUMNS)
    return out


def check_sizes(sizes, available: int) -> list[int]:
    try:
        sizes = sorted({int(s) for s in sizes})
    except (TypeError, ValueError):
        raise BadInputError(f"sizes must be whole numbers, got {sizes!r}", field="sizes") from None
    if not sizes or sizes[0] < 1:
        raise BadInputError("sizes must be ≥ 1", field="sizes")
    if sizes[-1] > available:
        raise BadInputError(f"size {sizes[-1]} needs {sizes[-1]} edit requests, the pool has {available}",
                            field="sizes")
    return sizes


def run_scaling(handle, pool, sizes=(1, 10, 100, 1000), methods=DEFAULT_METHODS, *, hparams: dict | None = None,
                base_hparams=None, gen_sample: int = 10, references=None, seed: int = 0,
                cov_cache_dir=None, progress=None, exclude_edited_neighbours: bool = True) -> pd.DataFrame:
    """For each n in `sizes`: the first n requests of `pool`, each method from the unedited
    weights (reverted in between), plus the unedited model's scores → one row per (method, n)."""
    pool = list(pool)
    sizes = check_sizes(sizes, len(pool))
    methods = check_methods(methods)
    frames = []
    for i, n in enumerate(sizes):
        comp = compare_methods(handle, pool[:n], methods, hparams=hparams, base_hparams=base_hparams,
                               gen_sample=min(gen_sample, n), references=references, seed=seed,
                               cov_cache_dir=cov_cache_dir, progress=_stage(progress, f"size {i + 1}/{len(sizes)}"),
                               exclude_edited_neighbours=exclude_edited_neighbours)
        frames.append(comp.table)
    return pd.concat(frames, ignore_index=True)


def demo_pool(n: int | None = None, path: str | Path | None = None) -> list:
    """Edit requests for comparisons and scaling: the demo world's CounterFact cases (or `path`),
    conflicts (same subject and relation) skipped, in file order."""
    from core.model import assets_dir
    from core.requests import load_dataset_requests

    path = Path(path) if path is not None else assets_dir() / "world" / "counterfact.json"
    if not path.is_file():
        raise BadInputError(f"no CounterFact file at {path}; build the demo world with "
                            "`workbench demo build-world`", field="dataset")
    requests, _ = load_dataset_requests(path, n)
    return requests
