"""Shared by the tracing tests: prompt, settings and a peaked random model."""

from __future__ import annotations

import torch

from core.arch import get_path
from core.tracing import TraceSettings, prepare_trace

PROMPT = "Miles Davis plays the trumpet and"
SUBJECT = "Miles Davis"
SETTINGS = TraceSettings(noise=3.0, samples=3, window=2, seed=7)
STRONG = TraceSettings(noise=20.0, samples=3, window=2, seed=7)


def sharpen(handle, factor: float = 8.0):
    """Scale the final norm so the random model's next-token distribution is peaked: the
    probabilities then move by O(0.1) under corruption and 1e-5 comparisons are meaningful."""
    with torch.no_grad():
        get_path(handle.hf, handle.spec.final_norm).weight.mul_(factor)
    return handle


def strong_prep(handle):
    """Strong noise, so that on a random model clean and corrupted differ clearly."""
    return prepare_trace(sharpen(handle), "The trumpet of Miles Davis is", SUBJECT, settings=STRONG)
