"""Edit ledger: history survives reopening, undo is bit-exact, revert reports its drift, replay
reproduces the live model, SIGKILL mid-record leaves whole batches only, threads do not collide."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from core.errors import BadInputError
from core.ledger import Ledger, LedgerError
from core.ledger_io import add_delta, drift_stats, live_weights
from tests.ledger_helpers import record_seeded, seeded_deltas
from tests.tiny import make_tiny_handle

LAYERS = [0, 1, 2]
ROOT = Path(__file__).resolve().parent.parent


def weights_equal(a, b) -> bool:
    wa, wb = live_weights(a, LAYERS), live_weights(b, LAYERS)
    return all(torch.equal(wa[x], wb[x]) for x in LAYERS)


def logits(handle):
    enc = handle.tokenize(["Miles Davis plays the", "Paris is"])
    with torch.no_grad():
        return handle.hf(**enc).logits


def test_history_survives_reopening(tmp_path, tiny_handle):
    ledger = Ledger(tmp_path)
    for seed, layers in enumerate([[1], [1, 2], [0]]):
        record_seeded(ledger, tiny_handle, layers, seed)
    reopened = Ledger(tmp_path)
    assert reopened.recovered == {"removed_files": [], "broken_batches": []}
    assert [b.id for b in reopened.batches()] == [1, 2, 3]
    assert [b.layers for b in reopened.batches()] == [[1], [1, 2], [0]]
    assert reopened.batches() == ledger.batches()
    table = reopened.table()
    assert list(table["status"]) == ["applied"] * 3 and list(table["edits"]) == [1, 1, 1]
    deltas, before = reopened.load_tensors(2)
    assert torch.equal(deltas[2], seeded_deltas(tiny_handle, [1, 2], 1)[2])
    assert set(before) == {1, 2}


def test_undo_restores_bit_exact_weights_and_replay_equals_live(tmp_path, tiny_handle):
    ledger = Ledger(tmp_path)
    record_seeded(ledger, tiny_handle, [1, 2], 0)
    record_seeded(ledger, tiny_handle, [1], 1)
    snapshot = live_weights(tiny_handle, LAYERS)
    record_seeded(ledger, tiny_handle, [1, 2], 2)
    assert not torch.equal(live_weights(tiny_handle, [1])[1], snapshot[1])

    report = ledger.undo(tiny_handle)
    assert (report.batch_id, report.exact, report.how, report.max_drift) == (3, True, "restore", 0.0)
    live = live_weights(tiny_handle, LAYERS)
    assert all(torch.equal(live[x], snapshot[x]) for x in LAYERS)
    assert [b.status for b in ledger.batches()] == ["applied", "applied", "reverted"]

    fresh = make_tiny_handle("gpt2")
    replay = Ledger(tmp_path).replay(fresh)
    assert replay.batch_ids == [1, 2] and replay.matches_recorded is True
    assert weights_equal(fresh, tiny_handle)
    assert torch.equal(logits(fresh), logits(tiny_handle))


def test_revert_earlier_batch_reports_drift_from_exact_state(tmp_path, tiny_handle):
    ledger = Ledger(tmp_path)
    base = live_weights(tiny_handle, LAYERS)
    for seed in range(3):
        record_seeded(ledger, tiny_handle, [1, 2], seed)
    report = ledger.revert(1, tiny_handle)
    assert report.how == "subtract" and set(report.drift_max_abs) == {1, 2}

    # Independent exact state: base + Δ₂ + Δ₃ added in order.
    d2, d3 = seeded_deltas(tiny_handle, [1, 2], 1), seeded_deltas(tiny_handle, [1, 2], 2)
    live = live_weights(tiny_handle, LAYERS)
    for x in (1, 2):
        exact = add_delta(add_delta(base[x], d2[x]), d3[x])
        max_abs, rel = drift_stats(live[x], exact)
        assert report.drift_max_abs[x] == pytest.approx(max_abs, abs=0) and report.drift_rel[x] == rel
        assert max_abs < 1e-6 and rel < 1e-6          # fp32 rounding of W + Δ₁ − Δ₁
        assert (live[x] - exact).abs().max().item() <= report.drift_max_abs[x]
    assert torch.equal(live[0], base[0])
    # replay gives the exact state; the live model is within the reported drift of it
    fresh = make_tiny_handle("gpt2")
    rep = ledger.replay(fresh)
    assert rep.batch_ids == [2, 3] and rep.matches_recorded is None
    replayed = live_weights(fresh, LAYERS)
    for x in (1, 2):
        assert torch.equal(replayed[x], add_delta(add_delta(base[x], d2[x]), d3[x]))
    # undoing the last batch now (weights no longer as recorded) also subtracts and reports
    report3 = ledger.undo(tiny_handle)
    assert report3.batch_id == 3 and report3.how == "subtract" and report3.max_drift < 1e-6


def test_revert_without_model_and_delete(tmp_path, tiny_handle):
    ledger = Ledger(tmp_path)
    record_seeded(ledger, tiny_handle, [1], 0)
    record_seeded(ledger, tiny_handle, [2], 1)
    assert ledger.undo().how == "ledger-only"
    with pytest.raises(BadInputError, match="batch_id"):
        ledger.revert(2)
    with pytest.raises(BadInputError, match="no batch 9"):
        ledger.get(9)
    before = live_weights(tiny_handle, [1])[1]
    ledger.delete(1, tiny_handle)                       # applied → reverted (exactly) → removed
    assert not torch.equal(live_weights(tiny_handle, [1])[1], before)
    assert [b.id for b in ledger.batches()] == [2] and not ledger.batch_path(1).exists()
    ledger.delete(2)
    assert ledger.batches() == []
    with pytest.raises(LedgerError, match="nothing to undo"):
        ledger.undo()


def test_replay_refuses_other_base_model(tmp_path, tiny_handle):
    ledger = Ledger(tmp_path)
    record_seeded(ledger, tiny_handle, [1], 0)
    other = make_tiny_handle("gpt2", seed=1)
    assert ledger.replay(other).batch_ids == []          # no session for these weights
    with pytest.raises(LedgerError, match="recorded on model weights"):
        ledger.replay(other, base_hash=tiny_handle.base_hash)
    assert ledger.replay(other, base_hash=tiny_handle.base_hash, force=True).batch_ids == [1]
    fresh = make_tiny_handle("gpt2")
    assert ledger.replay(fresh).batch_ids == [1]
    with pytest.raises(LedgerError, match="not at its unedited weights"):
        ledger.replay(fresh)                                  # twice would apply the batch twice


def test_recovery_removes_orphans_and_flags_damaged_batches(tmp_path, tiny_handle):
    ledger = Ledger(tmp_path)
    record_seeded(ledger, tiny_handle, [1], 0)
    record_seeded(ledger, tiny_handle, [2], 1)
    (ledger.batch_dir / "7.safetensors").write_bytes(b"left by a killed writer")
    (ledger.batch_dir / ".3.safetensors.abc.tmp").write_bytes(b"half")
    path = ledger.batch_path(2)
    path.write_bytes(path.read_bytes()[:-10])            # truncated
    reopened = Ledger(tmp_path)
    assert sorted(reopened.recovered["removed_files"]) == [".3.safetensors.abc.tmp", "7.safetensors"]
    assert reopened.recovered["broken_batches"] == [2]
    assert [b.status for b in reopened.batches()] == ["applied", "broken"]
    with pytest.raises(LedgerError, match="missing or damaged"):
        reopened.replay(make_tiny_handle("gpt2"))
    reopened.delete(2)
    assert Ledger(tmp_path).replay(make_tiny_handle("gpt2")).batch_ids == [1]


def _kill_while_recording(workspace: Path, after_batches: int, delay: float) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, "-m", "tests.ledger_child", str(workspace)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    try:
        for _ in range(after_batches):
            assert child.stdout.readline(), "the recording process died on its own"
        time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


@pytest.mark.parametrize("delay", [0.0, 0.013])
def test_sigkill_mid_record_leaves_whole_batches_and_replay_matches(tmp_path, delay):
    _kill_while_recording(tmp_path, after_batches=2 + random.Random(delay).randrange(3), delay=delay)
    ledger = Ledger(tmp_path)
    ids = [b.id for b in ledger.batches()]
    assert len(ids) >= 2 and ids == list(range(1, len(ids) + 1))
    assert all(b.status == "applied" for b in ledger.batches())
    files = sorted(p.name for p in ledger.batch_dir.iterdir())
    assert files == sorted(f"{i}.safetensors" for i in ids)       # no orphan, no temp file
    fresh, expected = make_tiny_handle("gpt2"), make_tiny_handle("gpt2")
    report = ledger.replay(fresh)
    assert report.batch_ids == ids and report.matches_recorded is True
    for k in range(len(ids)):                                       # what the child applied, in order
        layers = [k % 3, (k + 1) % 3]
        deltas = seeded_deltas(expected, layers, k)
        current = live_weights(expected, layers)
        for x in layers:
            expected.mlp_out_weight(x).data.copy_(add_delta(current[x], deltas[x]))
    assert weights_equal(fresh, expected)


def test_two_threads_recording_into_one_workspace(tmp_path):
    shared = make_tiny_handle("gpt2")
    other = make_tiny_handle("gpt2", seed=3)
    ledger = Ledger(tmp_path)
    errors = []

    def work(ledger_, handle, offset):
        try:
            for k in range(6):
                record_seeded(ledger_, handle, [k % 3], seed=offset + k, subject=f"s{offset + k}")
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(ledger, shared, 0)),
               threading.Thread(target=work, args=(ledger, shared, 100)),
               threading.Thread(target=work, args=(Ledger(tmp_path), other, 200))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    reopened = Ledger(tmp_path)
    assert len(reopened.batches()) == 18 and len(reopened.batches(shared.base_hash)) == 12
    assert reopened.recovered["broken_batches"] == []
    for live in (shared, other):
        fresh = make_tiny_handle("gpt2", seed=0 if live is shared else 3)
        rep = reopened.replay(fresh)
        assert rep.matches_recorded is True and weights_equal(fresh, live)
