"""Helpers for ledger / patch tests: seeded ΔW batches applied to a handle and recorded."""

from __future__ import annotations

import torch

from core.ledger_io import add_delta, live_weights, read_layer_hashes, set_weights


def seeded_deltas(handle, layers, seed: int, scale: float = 0.01) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {x: torch.randn(tuple(handle.mlp_out_weight(x).shape), generator=g) * scale for x in layers}


def record_seeded(ledger, handle, layers, seed: int, subject: str = "Miles Davis"):
    """Apply seeded deltas to `handle` and record them as one batch (as apply_edit + record do)."""
    deltas = seeded_deltas(handle, layers, seed)
    with handle.lock:
        before = live_weights(handle, layers)
        set_weights(handle, {x: add_delta(before[x], deltas[x]) for x in layers})
        after = read_layer_hashes(handle, layers)
        # still under the lock: rows must be in the order the edits reached the model
        return ledger.write_batch(
            model_name=handle.name, base_hash=handle.base_hash, method="memit", hparams={"seed": seed},
            requests=[{"prompt": "{} plays the", "subject": subject, "target_new": "piano"}],
            metrics={"ES": 100.0}, timings={"z": 0.1}, deltas=deltas, before=before, after_hashes=after)
