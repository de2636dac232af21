"""Patches: the ΔW of chosen batches in one file another person can apply to the same base model.

A patch is one safetensors file. Its tensors are the deltas, either per batch
(`batch<i>.delta.<layer>`, applied one after another: the result is bit-identical to the session
that made them) or summed per layer (`delta.<layer>`, one addition: equal up to rounding). Its
metadata holds the JSON manifest — base model name and weights hash, layers, and per batch the
method, hparams, covariance key, seed and requests — plus a checksum over manifest and tensor
bytes, so a damaged or truncated file is detected before anything is applied. `export_patch`
also writes the manifest beside the patch (`<file>.json`) for people to read.

`save_edited_model` writes the whole edited model with `save_pretrained` instead.

Size: a patch holds float32 ΔW of the edited MLP output weights, one per layer per batch (4 MB
per batch of layer 0 on the demo model, whose widened layer 0 is 8,192 × 128). Reading one is
refused above `patch_size_limit(handle)` — room for `LIMIT_BATCHES` batches that each change every
layer, plus the manifest, never more than `LIMIT_CAP_BYTES` — in `apply_patch`, that is in the
History page and in `workbench session apply` alike.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from core.errors import BadInputError
from core.ledger_io import add_delta, json_safe, live_weights, read_layer_hashes, set_weights, write_atomic

PATCH_FORMAT = "memit-workbench-patch/1"
MODES = ("per_batch", "sum")
# The record beside a saved edited model (`save_edited_model`), for the app, `workbench edit --out`
# and `workbench session apply --save-dir` alike. `workbench edit --out` used to name it
# memit_edits.json.
EDIT_MANIFEST = "workbench_edit.json"
LEGACY_EDIT_MANIFEST = "memit_edits.json"
# The largest patch accepted for a model (`patch_size_limit`): this many batches that each change
# every layer's MLP output weight (float32), plus room for the header and manifest (1,000 edits with
# their paraphrases and neighbours take about 1 MB), never more than the cap (memory: the file is
# read whole, then its tensors are copied).
LIMIT_BATCHES = 8
LIMIT_MANIFEST_BYTES = 16 * 2**20
LIMIT_CAP_BYTES = 4 * 2**30
MB = 2**20                       # the unit of sizes in messages (Streamlit's upload MB too)


@dataclass
class Patch:
    manifest: dict
    tensors: dict[str, torch.Tensor]

    def steps(self) -> list[tuple[dict, dict[int, torch.Tensor]]]:
        """(batch manifest, {layer: ΔW}) in the order they are applied."""
        if self.manifest["mode"] == "sum":
            deltas = {int(k.split(".")[1]): v for k, v in self.tensors.items()}
            merged = {"method": "+".join(sorted({b["method"] for b in self.manifest["batches"]})),
                      "layers": sorted(deltas), "hparams": {"patch_of": [b["source_id"] for b in self.manifest["batches"]]},
                      "requests": [r for b in self.manifest["batches"] for r in b["requests"]], "metrics": {}}
            return [(merged, deltas)]
        out = []
        for i, b in enumerate(self.manifest["batches"]):
            prefix = f"batch{i}.delta."
            out.append((b, {int(k[len(prefix):]): v for k, v in self.tensors.items() if k.startswith(prefix)}))
        return out


@dataclass
class PatchApplyReport:
    path: str
    base_hash_match: bool
    layers: list[int]
    n_batches: int
    n_edits: int
    recorded_ids: list[int]


def layer_delta_bytes(handle, layers=None) -> int:
    """Bytes of one float32 ΔW per layer in `layers` (default: every layer) for this model."""
    layers = range(handle.n_layers) if layers is None else layers
    return sum(handle.mlp_out_weight(x).numel() * 4 for x in layers)


def patch_size_limit(handle) -> int:
    """The largest patch file accepted for `handle`, in bytes (see the module docstring)."""
    return min(LIMIT_CAP_BYTES, LIMIT_BATCHES * layer_delta_bytes(handle) + LIMIT_MANIFEST_BYTES)


def export_size(handle, ledger, batch_ids, mode: str = "per_batch") -> int:
    """Bytes of the ΔW an export of these batches holds (the file adds its manifest): per_batch
    one per batch and layer, sum one per layer."""
    records = [ledger.get(int(i)) for i in sorted({int(x) for x in batch_ids})]
    if mode == "sum":
        return layer_delta_bytes(handle, sorted({x for r in records for x in r.layers}))
    return sum(layer_delta_bytes(handle, r.layers) for r in records)


def format_size(n: int) -> str:
    """Bytes as people read them: 48.0 KB, 16.4 MB, 1.5 GB (units of 1,024)."""
    for unit, scale in (("GB", 2**30), ("MB", MB)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1024:.1f} KB"


def check_patch_size(path: str | Path, limit: int, model: str | None = None) -> int:
    """The file's size in bytes; BadInputError(field='patch') when it is over `limit` (a model's
    `patch_size_limit`, or `LIMIT_CAP_BYTES` before a model is loaded)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"no patch file at {path}", field="patch")
    size = path.stat().st_size
    if size > limit:
        whose = f"patches for '{model}' are" if model else "a patch is"
        raise BadInputError(
            f"{path.name} is {format_size(size)}; {whose} limited to {format_size(limit)} (room for "
            f"{LIMIT_BATCHES} batches that each change every layer, at most {format_size(LIMIT_CAP_BYTES)}). "
            "Export fewer batches, or with mode sum (one ΔW per layer)", field="patch")
    return size


def _checksum(manifest: dict, tensors: dict[str, torch.Tensor]) -> str:
    """blake2b over the manifest (without its checksum) and every tensor's name, shape, dtype, bytes."""
    h = hashlib.blake2b(digest_size=16)
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    h.update(json.dumps(body, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode() + str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _covariance_key(hparams: dict) -> dict:
    """What identifies the key covariance C a batch was computed with (empty for FT)."""
    if "covariance_key" in hparams:
        return hparams["covariance_key"]
    return {k: hparams[k] for k in ("corpus", "n_samples", "stats_dtype", "stats_max_tokens", "mom2_weight")
            if k in hparams}


def export_patch(ledger, batch_ids, out: str | Path, *, mode: str = "per_batch") -> Path:
    """Write the chosen batches of `ledger` as a patch file `out` (+ `out.json` manifest)."""
    if mode not in MODES:
        raise BadInputError(f"unknown mode '{mode}' ({', '.join(MODES)})", field="mode")
    ids = sorted({int(x) for x in batch_ids})
    if not ids:
        raise BadInputError("choose at least one batch", field="batch_ids")
    records = [ledger.get(i) for i in ids]
    bases = {r.base_hash for r in records}
    if len(bases) > 1:
        raise BadInputError(f"batches {ids} were made on different base models; export them separately",
                            field="batch_ids")
    tensors: dict[str, torch.Tensor] = {}
    batches = []
    for i, rec in enumerate(records):
        deltas, _ = ledger.load_tensors(rec.id)
        for layer, d in deltas.items():
            if mode == "per_batch":
                tensors[f"batch{i}.delta.{layer}"] = d.contiguous()
            else:
                key = f"delta.{layer}"
                tensors[key] = tensors[key] + d if key in tensors else d.clone()
        batches.append({"source_id": rec.id, "method": rec.method, "layers": rec.layers,
                        "hparams": rec.hparams, "covariance_key": _covariance_key(rec.hparams),
                        "seed": rec.hparams.get("seed"), "requests": rec.requests, "metrics": rec.metrics,
                        "status_at_export": rec.status})
    # Strict JSON (no bare NaN: scores a batch could not measure are null).
    manifest = json_safe({"format": PATCH_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                          "base_model": records[0].model_name, "base_hash": records[0].base_hash, "mode": mode,
                          "layers": sorted({x for r in records for x in r.layers}),
                          "n_edits": sum(r.n_edits for r in records), "batches": batches})
    manifest["checksum"] = _checksum(manifest, tensors)
    out = Path(out)
    for path in (out, out.with_name(out.name + ".json")):
        if path.is_dir():
            raise BadInputError(f"{path} is a folder; give the patch a file name", field="out")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, st_save(tensors, metadata={"manifest": json.dumps(manifest, allow_nan=False)}))
    write_atomic(out.with_name(out.name + ".json"),
                 (json.dumps(manifest, indent=2, allow_nan=False) + "\n").encode())
    return out


def read_patch(path: str | Path, *, max_bytes: int | None = None, model: str | None = None) -> Patch:
    """Load and verify a patch file; BadInputError(field='patch') when damaged, foreign or larger
    than `max_bytes` (default `LIMIT_CAP_BYTES`; checked before it is read)."""
    path = Path(path)
    check_patch_size(path, LIMIT_CAP_BYTES if max_bytes is None else max_bytes, model)
    payload = path.read_bytes()
    try:
        tensors = st_load(payload)
        header_len = int.from_bytes(payload[:8], "little")
        meta = json.loads(payload[8:8 + header_len]).get("__metadata__") or {}
        manifest = json.loads(meta["manifest"])
    except (SafetensorError, ValueError, KeyError, TypeError):
        raise BadInputError(f"{path} is damaged or truncated, or not a workbench patch", field="patch") from None
    if manifest.get("format") != PATCH_FORMAT:
        raise BadInputError(f"{path} is not a workbench patch (format {manifest.get('format')!r})", field="patch")
    if _checksum(manifest, tensors) != manifest.get("checksum"):
        raise BadInputError(f"{path} is damaged: its checksum does not match its contents", field="patch")
    return Patch(manifest, tensors)


def apply_patch(handle, path: str | Path, *, force: bool = False, ledger=None) -> PatchApplyReport:
    """Add a patch's ΔW to the live model; each batch becomes a ledger batch when `ledger` is given.

    Refused (nothing changed) when the file is larger than `patch_size_limit(handle)` or the patch
    was made on other base weights, unless `force`; always refused when a layer's shape does not
    fit. On any error the weights are restored.
    """
    patch = read_patch(path, max_bytes=patch_size_limit(handle), model=handle.name)
    m = patch.manifest
    match = m["base_hash"] == handle.base_hash
    if not match and not force:
        raise BadInputError(
            f"the patch was made for '{m['base_model']}' (weights {m['base_hash'][:12]}), but the loaded "
            f"model '{handle.name}' has weights {handle.base_hash[:12]}; applying it would corrupt the "
            "model — use force (CLI --force) only if you know they are compatible", field="patch")
    steps = patch.steps()
    layers = handle.check_layers(m["layers"])
    for _, deltas in steps:
        for layer, d in deltas.items():
            shape = tuple(handle.mlp_out_weight(layer).shape)
            if tuple(d.shape) != shape:
                raise BadInputError(f"layer {layer}: the patch holds ΔW of shape {tuple(d.shape)}, "
                                    f"the model's weight is {shape}", field="patch")
    recorded = []
    with handle.lock:
        originals = live_weights(handle, layers)
        try:
            for batch, deltas in steps:
                before = live_weights(handle, deltas)
                set_weights(handle, {x: add_delta(before[x], deltas[x]) for x in deltas})
                if ledger is not None:
                    rec = ledger.write_batch(
                        model_name=handle.name, base_hash=handle.base_hash, method=batch["method"],
                        hparams={**batch["hparams"], "from_patch": Path(path).name}, requests=batch["requests"],
                        metrics=batch.get("metrics") or {}, timings={}, deltas=deltas, before=before,
                        after_hashes=read_layer_hashes(handle, deltas))
                    recorded.append(rec.id)
        except BaseException:
            set_weights(handle, originals)
            for bid in recorded:
                ledger.delete(bid)
            raise
    return PatchApplyReport(str(path), match, layers, len(steps), int(m.get("n_edits", 0)), recorded)


def save_edited_model(handle, out_dir: str | Path, note: dict | None = None) -> Path:
    """`save_pretrained` the live (edited) model and its tokenizer, plus `EDIT_MANIFEST` (JSON: base
    model, its hash and `note`); reloads in plain transformers (MLPs widened at load are saved at
    one width, `core.widen.save_uniform`). A manifest an older version wrote into the same folder
    under `LEGACY_EDIT_MANIFEST` is removed: it describes weights that are no longer there."""
    from core.widen import save_uniform

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"{out} is a file, not a folder", field="out")
    out.mkdir(parents=True, exist_ok=True)
    with handle.lock:
        save_uniform(handle, out)
        handle.tokenizer.save_pretrained(out)
    info = json_safe({"saved_by": "memit-workbench", "base_model": handle.name, "base_hash": handle.base_hash,
                      **(note or {})})
    write_atomic(out / EDIT_MANIFEST, (json.dumps(info, indent=2, allow_nan=False) + "\n").encode())
    legacy = out / LEGACY_EDIT_MANIFEST
    if _written_by_workbench(legacy):
        legacy.unlink()
    return out


def _written_by_workbench(path: Path) -> bool:
    """True for a JSON object this project wrote (`saved_by`); a user's own file is left alone."""
    try:
        return json.loads(path.read_text()).get("saved_by") == "memit-workbench"
    except (OSError, ValueError, AttributeError):
        return False
