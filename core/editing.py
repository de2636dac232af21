"""Apply and revert weight edits, atomically and bit-exactly.

    applied = edit(handle, requests)            # compute (METHODS[method]) + apply
    revert(handle, applied)                     # weights exactly as before `apply_edit`

Every editing method returns an `EditResult` (ΔW per layer of W_out) and changes nothing;
`apply_edit` is the only place weights change. It either applies every ΔW or — on any exception,
including a NaN/inf check, out-of-memory and KeyboardInterrupt — restores the weights bit for bit
before the exception propagates. The pre-edit weights are kept (on CPU) in the `AppliedEdit`, so
`revert` restores them exactly; revert stacked edits newest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from core.errors import BadInputError, WorkbenchError
from core.ft import execute_ft
from core.memit import EditResult, execute_memit
from core.rome import execute_rome

# name -> execute(handle, requests, hparams=None, *, progress=None, cov_cache_dir=None) -> EditResult
METHODS: dict[str, Callable[..., EditResult]] = {
    "memit": execute_memit,
    "rome": execute_rome,
    "ft": execute_ft,
}


class EditFailedError(WorkbenchError):
    """Applying an edit failed; the weights were restored before this was raised."""


@dataclass
class AppliedEdit:
    result: EditResult
    originals: dict[int, torch.Tensor]   # W_out of each edited layer before the edit (CPU, bit-exact)


def _check(handle, result: EditResult) -> None:
    handle.check_layers(result.layers)
    if set(result.deltas) != set(result.layers):
        raise BadInputError(f"deltas for layers {sorted(result.deltas)} but layers {result.layers}",
                            field="deltas")
    for layer, delta in result.deltas.items():
        w = handle.mlp_out_weight(layer)
        if tuple(delta.shape) != tuple(w.shape):
            raise BadInputError(f"layer {layer}: ΔW has shape {tuple(delta.shape)}, W_out {tuple(w.shape)}",
                                field="deltas")
        if not bool(torch.isfinite(delta).all()):
            raise BadInputError(f"layer {layer}: ΔW contains NaN or inf; nothing was changed", field="deltas")


def _add_delta(weight: torch.Tensor, delta: torch.Tensor) -> None:
    weight.add_(delta.to(weight.device, weight.dtype))


def _restore(handle, originals: dict[int, torch.Tensor]) -> None:
    with torch.no_grad():
        for layer, w0 in originals.items():
            handle.mlp_out_weight(layer).copy_(w0)


def apply_edit(handle, result: EditResult) -> AppliedEdit:
    """W_out += ΔW for every edited layer, all or nothing (see module docstring)."""
    _check(handle, result)
    with handle.lock:
        originals = {l: handle.mlp_out_weight(l).detach().to("cpu", copy=True) for l in result.layers}
        try:
            with torch.no_grad():
                for layer in result.layers:
                    _add_delta(handle.mlp_out_weight(layer), result.deltas[layer])
            bad = [l for l in result.layers if not bool(torch.isfinite(handle.mlp_out_weight(l)).all())]
            if bad:
                raise EditFailedError(f"the edit made layer(s) {bad} non-finite (NaN/inf); weights restored")
        except BaseException:
            _restore(handle, originals)
            raise
    return AppliedEdit(result=result, originals=originals)


def revert(handle, applied: AppliedEdit) -> None:
    """Put back the weights `applied` replaced, bit for bit."""
    for layer, w0 in applied.originals.items():
        if tuple(handle.mlp_out_weight(layer).shape) != tuple(w0.shape):
            raise BadInputError(f"layer {layer} of this model does not match the edit", field="applied")
    with handle.lock:
        _restore(handle, applied.originals)


def edit(handle, requests, method: str = "memit", hparams=None, progress=None, *,
         cov_cache_dir=None) -> AppliedEdit:
    """Compute an edit with METHODS[method] and apply it; on any failure the model is unchanged."""
    if method not in METHODS:
        raise BadInputError(f"unknown method '{method}' (available: {', '.join(sorted(METHODS))})",
                            field="method")
    result = METHODS[method](handle, requests, hparams, progress=progress, cov_cache_dir=cov_cache_dir)
    return apply_edit(handle, result)
