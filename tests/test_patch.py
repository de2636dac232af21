"""Patches: export → apply on a fresh model gives identical logits; wrong base refused; damage
detected; save_pretrained of an edited model reloads in plain transformers with identical logits."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from core.errors import BadInputError
from core.ledger import Ledger
from core import patch as patch_mod
from core.ledger_io import live_weights
from core.patch import (EDIT_MANIFEST, LEGACY_EDIT_MANIFEST, apply_patch, export_patch, read_patch,
                        save_edited_model)
from tests.ledger_helpers import record_seeded, seeded_deltas
from tests.tiny import make_tiny_handle

PROMPTS = ["Miles Davis plays the", "Paris is the capital of"]


def logits(hf, tokenizer):
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return hf(**enc).logits


@pytest.fixture
def session(tmp_path, tiny_handle):
    """Three batches, the middle one undone."""
    ledger = Ledger(tmp_path / "ws")
    record_seeded(ledger, tiny_handle, [1, 2], 0)
    record_seeded(ledger, tiny_handle, [1], 1)
    ledger.undo(tiny_handle)
    record_seeded(ledger, tiny_handle, [0, 1], 2)
    return ledger, tiny_handle


def test_per_batch_patch_reproduces_the_session_exactly(tmp_path, session):
    ledger, live = session
    out = export_patch(ledger, [1, 3], tmp_path / "edits.safetensors")
    manifest = json.loads((tmp_path / "edits.safetensors.json").read_text())
    assert manifest["base_hash"] == live.base_hash and manifest["base_model"] == "tiny-gpt2"
    assert manifest["layers"] == [0, 1, 2] and manifest["mode"] == "per_batch"
    assert [b["source_id"] for b in manifest["batches"]] == [1, 3]
    assert manifest["batches"][0]["seed"] == 0 and manifest["batches"][0]["requests"][0]["target_new"] == "piano"
    assert read_patch(out).manifest == manifest

    fresh = make_tiny_handle("gpt2")
    target = Ledger(tmp_path / "other-ws")
    report = apply_patch(fresh, out, ledger=target)
    assert report.base_hash_match and report.n_batches == 2 and report.recorded_ids == [1, 2]
    assert torch.equal(logits(fresh.hf, fresh.tokenizer), logits(live.hf, live.tokenizer))
    # the receiving workspace can undo the patch batch by batch, bit-exactly
    target.undo(fresh)
    target.undo(fresh)
    base = make_tiny_handle("gpt2")
    assert all(torch.equal(a, b) for a, b in zip(live_weights(fresh, [0, 1, 2]).values(),
                                                  live_weights(base, [0, 1, 2]).values()))


def test_summed_patch_equals_sum_of_deltas(tmp_path, session):
    ledger, live = session
    patch = read_patch(export_patch(ledger, [1, 3], tmp_path / "sum.safetensors", mode="sum"))
    d1, d3 = seeded_deltas(live, [1, 2], 0), seeded_deltas(live, [0, 1], 2)
    assert sorted(patch.tensors) == ["delta.0", "delta.1", "delta.2"]
    assert torch.equal(patch.tensors["delta.1"], d1[1] + d3[1])
    fresh = make_tiny_handle("gpt2")
    apply_patch(fresh, tmp_path / "sum.safetensors")
    assert torch.allclose(logits(fresh.hf, fresh.tokenizer), logits(live.hf, live.tokenizer), atol=1e-5)


def test_wrong_base_model_is_refused_unless_forced(tmp_path, session):
    ledger, _ = session
    out = export_patch(ledger, [1], tmp_path / "p.safetensors")
    other = make_tiny_handle("gpt2", seed=5)
    before = live_weights(other, [1, 2])
    with pytest.raises(BadInputError, match="made for 'tiny-gpt2'.*force"):
        apply_patch(other, out)
    assert all(torch.equal(before[x], live_weights(other, [x])[x]) for x in (1, 2))   # nothing changed
    report = apply_patch(other, out, force=True)
    assert not report.base_hash_match
    assert torch.equal(live_weights(other, [1])[1], before[1] + seeded_deltas(other, [1], 0)[1])


def test_corrupted_and_truncated_patches_are_detected(tmp_path, session):
    ledger, live = session
    out = export_patch(ledger, [1, 3], tmp_path / "p.safetensors")
    good = out.read_bytes()
    flipped = bytearray(good)
    flipped[-5] ^= 0x40                                  # one bit in the tensor data
    for name, payload, message in [("flip", bytes(flipped), "checksum"),
                                   ("short", good[:len(good) // 2], "damaged or truncated"),
                                   ("junk", b"not a patch at all", "damaged or truncated")]:
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(payload)
        with pytest.raises(BadInputError, match=message):
            apply_patch(make_tiny_handle("gpt2"), bad)
    with pytest.raises(BadInputError, match="no patch file"):
        read_patch(tmp_path / "missing.safetensors")
    with pytest.raises(BadInputError, match="mode"):
        export_patch(ledger, [1], tmp_path / "x.safetensors", mode="zip")
    with pytest.raises(BadInputError, match="no batch 42"):
        export_patch(ledger, [42], tmp_path / "x.safetensors")


def test_save_pretrained_reloads_with_identical_logits(tmp_path, session):
    _, live = session
    out = save_edited_model(live, tmp_path / "edited", note={"batches": [1, 3]})
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert json.loads((out / EDIT_MANIFEST).read_text())["batches"] == [1, 3]
    assert torch.equal(logits(reloaded, live.tokenizer), logits(live.hf, live.tokenizer))
    base = make_tiny_handle("gpt2")
    assert not torch.equal(logits(base.hf, base.tokenizer), logits(reloaded, live.tokenizer))


def test_saved_model_has_one_manifest_name(tmp_path):
    """One record name (workbench_edit.json); re-saving into a folder an older `edit --out` wrote
    removes its stale memit_edits.json, but never a file of the user's under that name."""
    h = make_tiny_handle("gpt2")
    assert EDIT_MANIFEST == "workbench_edit.json" and LEGACY_EDIT_MANIFEST == "memit_edits.json"
    old = tmp_path / "old"
    old.mkdir()
    (old / LEGACY_EDIT_MANIFEST).write_text(json.dumps({"saved_by": "memit-workbench", "base_hash": "x"}))
    save_edited_model(h, old, note={"method": "memit"})
    assert sorted(p.name for p in old.glob("*.json") if "edit" in p.name) == [EDIT_MANIFEST]
    assert json.loads((old / EDIT_MANIFEST).read_text())["method"] == "memit"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / LEGACY_EDIT_MANIFEST).write_text('{"my": "notes"}')
    save_edited_model(h, mine)
    assert json.loads((mine / LEGACY_EDIT_MANIFEST).read_text()) == {"my": "notes"}
    assert json.loads((mine / EDIT_MANIFEST).read_text())["base_hash"] == h.base_hash


# ---- size limit -----------------------------------------------------------------------------------

def tensor_bytes(path) -> int:
    """A safetensors file's tensor data: its size less the 8-byte length and the JSON header."""
    payload = path.read_bytes()
    return len(payload) - 8 - int.from_bytes(payload[:8], "little")


def test_export_size_is_the_tensor_bytes_of_the_file(tmp_path, session):
    ledger, live = session                           # batches 1 (layers 1, 2) and 3 (layers 0, 1)
    w = 32 * 128 * 4                                 # one float32 ΔW of the tiny model's c_proj
    assert live.mlp_out_weight(0).numel() * 4 == w and patch_mod.layer_delta_bytes(live) == 3 * w
    assert patch_mod.export_size(live, ledger, [3, 1]) == 4 * w
    assert patch_mod.export_size(live, ledger, [1, 3], "sum") == 3 * w
    for mode in ("per_batch", "sum"):
        out = export_patch(ledger, [1, 3], tmp_path / f"{mode}.safetensors", mode=mode)
        assert tensor_bytes(out) == patch_mod.export_size(live, ledger, [1, 3], mode)


def test_patch_size_limit_from_the_model_with_a_cap(tiny_handle, monkeypatch):
    w = 32 * 128 * 4
    assert patch_mod.patch_size_limit(tiny_handle) == 8 * 3 * w + 16 * 2**20
    monkeypatch.setattr(patch_mod, "LIMIT_CAP_BYTES", 100_000)
    assert patch_mod.patch_size_limit(tiny_handle) == 100_000
    assert [patch_mod.format_size(n) for n in (49152, 17 * 2**20 + 2**19, 4 * 2**30)] == [
        "48.0 KB", "17.5 MB", "4.0 GB"]


def test_patch_over_the_model_limit_is_refused_and_changes_nothing(tmp_path, session, monkeypatch):
    ledger, _ = session
    small = export_patch(ledger, [3], tmp_path / "one.safetensors")              # 2 layers
    big = export_patch(ledger, [1, 3], tmp_path / "two.safetensors")             # 4 layer deltas
    # room for one batch that changes all three layers, no manifest allowance: 3 ΔW
    monkeypatch.setattr(patch_mod, "LIMIT_BATCHES", 1)
    monkeypatch.setattr(patch_mod, "LIMIT_MANIFEST_BYTES", 0)
    fresh, target = make_tiny_handle("gpt2"), Ledger(tmp_path / "target")
    assert small.stat().st_size <= patch_mod.patch_size_limit(fresh) < big.stat().st_size
    start = live_weights(fresh, [0, 1, 2])
    with pytest.raises(BadInputError, match=r"two.safetensors is \d+\.\d KB; patches for 'tiny-gpt2' are limited to 48\.0 KB") as err:
        apply_patch(fresh, big, ledger=target)
    assert err.value.field == "patch" and "mode sum" in str(err.value)
    assert f"is {patch_mod.format_size(big.stat().st_size)};" in str(err.value)
    assert all(torch.equal(a, b) for a, b in zip(start.values(), live_weights(fresh, [0, 1, 2]).values()))
    assert target.batches() == []
    assert apply_patch(fresh, small, ledger=target).recorded_ids == [1]          # under the limit: applied
    # before a model is loaded the cap alone applies (`workbench session apply` reads it first)
    monkeypatch.setattr(patch_mod, "LIMIT_CAP_BYTES", small.stat().st_size - 1)
    with pytest.raises(BadInputError, match="a patch is limited to"):
        read_patch(small)
    assert read_patch(small, max_bytes=small.stat().st_size).manifest["n_edits"] == 1
