"""Shared helpers for the MEMIT tests: a tiny corpus, small hyperparameters, bitwise snapshots."""

from __future__ import annotations

import torch

from core.hparams import MemitHparams
from core.requests import EditRequest
from tests.tiny import TRAIN_TEXT

REQUESTS = [
    EditRequest("{} plays the", "Miles Davis", "chess", "trumpet",
                paraphrase_prompts=("Miles Davis is a player of",),
                neighborhood_prompts=("Orla Venn Marquez plays the",)),
    EditRequest("The capital of {} is", "Norvania", "Rome", "Keldport"),
    EditRequest("{} is headquartered in", "Toyota", "Paris", "Japan"),
    EditRequest("{} works for", "Kara Selwyn", "Toyota Systems", "Brightwell Systems"),
]


def write_corpus(path) -> str:
    path.write_text("\n".join(TRAIN_TEXT * 3) + "\n")
    return str(path)


def small_hparams(corpus: str, **changes) -> MemitHparams:
    d = dict(layers=[0, 1], mom2_weight=1.0, v_steps=6, v_lr=0.5, clamp_norm_factor=4.0,
             kl_factor=0.0625, v_weight_decay=0.5, corpus=corpus, n_samples=1000,
             stats_batch_size=8, batch_size=0, context_templates=["{}", "The city. {}"])
    d.update(changes)
    return MemitHparams(**d)


def snapshot(handle) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in handle.hf.state_dict().items()}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def assert_unchanged(handle, snap: dict[str, torch.Tensor]) -> None:
    """Every parameter and buffer bit-for-bit as in `snap`."""
    now = handle.hf.state_dict()
    assert set(now) == set(snap)
    changed = [k for k, v in snap.items() if not same_bits(now[k], v)]
    assert not changed, f"changed: {changed}"


# CSV of two good edits (and their true objects) for the CLI tests
GOOD_CSV = ("subject,relation,object,true_object\n"
            "Miles Davis,{} plays the,chess,trumpet\n"
            "Norvania,The capital of {} is,Rome,Keldport\n")
