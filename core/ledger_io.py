"""Weight bookkeeping shared by the ledger and patches: hashes, ΔW arithmetic, drift, atomic writes.

`add_delta` is THE way a stored ΔW (fp32, stored layout) is added to a weight: cast ΔW to the
weight's dtype, then add in that dtype — the same arithmetic as `core.editing.apply_edit`, so a
replayed session is bit-identical to the live one.
"""

from __future__ import annotations

import hashlib
import math
import os
import uuid
from pathlib import Path

import torch


def digest(payload: bytes) -> str:
    """Content hash of a file's bytes (blake2b, 32 hex digits)."""
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def layer_hash(w: torch.Tensor) -> str:
    """Hash of one weight tensor: shape, dtype and raw bytes."""
    t = w.detach().contiguous().cpu()
    h = hashlib.blake2b(digest_size=16)
    h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
    h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def add_delta(w: torch.Tensor, delta: torch.Tensor, sign: int = 1) -> torch.Tensor:
    """W + sign·ΔW in W's dtype (out of place, on W's device)."""
    d = delta.to(device=w.device, dtype=w.dtype)
    return w + d if sign > 0 else w - d


def live_weights(handle, layers) -> dict[int, torch.Tensor]:
    """Copies of W_out of `layers` as stored in the model (hold handle.lock)."""
    return {int(x): handle.mlp_out_weight(int(x)).detach().clone() for x in layers}


def read_layer_hashes(handle, layers) -> dict[int, str]:
    """layer_hash of W_out of each layer of the live model (hold handle.lock)."""
    return {int(x): layer_hash(handle.mlp_out_weight(int(x))) for x in layers}


@torch.no_grad()
def set_weights(handle, weights: dict[int, torch.Tensor]) -> None:
    """Copy tensors into W_out of their layers, bit-exactly (hold handle.lock)."""
    for layer, w in weights.items():
        target = handle.mlp_out_weight(int(layer))
        if tuple(w.shape) != tuple(target.shape):
            raise ValueError(f"layer {layer}: weight of shape {tuple(w.shape)} does not fit {tuple(target.shape)}")
        target.copy_(w.to(device=target.device, dtype=target.dtype))


def drift_stats(w: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    """(max |W − W_exact|, ‖W − W_exact‖_F / ‖W_exact‖_F), computed in float64."""
    diff = w.detach().cpu().double() - exact.detach().cpu().double()
    norm = exact.detach().cpu().double().norm().item()
    return float(diff.abs().max().item()), float(diff.norm().item() / norm) if norm > 0 else 0.0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, payload: bytes) -> None:
    """Write bytes to `path` so that a crash leaves either the old state or the whole file.

    The temporary file lies next to `path` (same folder, so the rename is atomic) and is removed
    on any failure; a folder at `path` is refused before anything is written.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a file")
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def json_safe(obj):
    """A copy of `obj` that strict JSON can hold: NaN and ±inf become None (null), tuples lists,
    numpy/torch scalars Python numbers. Readers of what it wrote treat null as "not measured"."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
