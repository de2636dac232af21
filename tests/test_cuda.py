"""The same algorithms on a CUDA device: fp32 results equal the CPU's, bf16 results stay close, and
the weights-are-safe guarantees (bit-exact revert, atomic apply) hold on GPU memory too.

Skipped where there is no CUDA device (CI here); run them on a GPU machine with
`python -m pytest -q tests/test_cuda.py`. Matmuls stay fp32 (TF32 is off by default in PyTorch), so
fp32 CUDA and CPU agree to float rounding; the noise and the context prefixes are drawn from CPU
generators, so both devices see the same random numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import core.editing as editing
from core.covariance import collect_second_moments
from core.memit import execute_memit
from core.tracing import KINDS, TraceSettings, prepare_trace, run_grid
from core.tracing_severed import run_severed
from tests.memit_helpers import REQUESTS, assert_unchanged, small_hparams, snapshot, write_corpus
from tests.tiny import TRAIN_TEXT, make_tiny_handle
from tests.trace_helpers import STRONG, SUBJECT, sharpen

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PROMPT = "The trumpet of Miles Davis is"


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus.txt")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_trace_grid_and_severed_on_cuda_equal_cpu(family):
    cpu, gpu = sharpen(make_tiny_handle(family, device="cpu")), sharpen(make_tiny_handle(family, device="cuda"))
    assert gpu.device.type == "cuda"
    p_cpu = prepare_trace(cpu, PROMPT, SUBJECT, settings=STRONG)
    p_gpu = prepare_trace(gpu, PROMPT, SUBJECT, settings=STRONG)
    assert p_gpu.clean_prob == pytest.approx(p_cpu.clean_prob, abs=1e-5)
    assert p_gpu.corrupted_prob == pytest.approx(p_cpu.corrupted_prob, abs=1e-5)
    assert abs(p_cpu.clean_prob - p_cpu.corrupted_prob) > 1e-3       # the comparison means something
    for kind in KINDS:
        ref = run_grid(p_cpu, kind).scores
        batched = run_grid(p_gpu, kind)
        loop = run_grid(p_gpu, kind, batched=False)
        np.testing.assert_allclose(batched.scores, ref, atol=1e-5, rtol=0)
        assert batched.forwards == 1 < loop.forwards            # a GPU plan runs the grid at once
        np.testing.assert_allclose(loop.scores, ref, atol=1e-5, rtol=0)
    s_cpu, s_gpu = run_severed(p_cpu), run_severed(p_gpu)
    for name in ("normal", "mlp_severed", "attn_severed"):
        np.testing.assert_allclose(getattr(s_gpu, name), getattr(s_cpu, name), atol=1e-5)


def test_second_moments_on_cuda_equal_cpu():
    cpu, gpu = make_tiny_handle(device="cpu"), make_tiny_handle(device="cuda")
    ref, n_ref = collect_second_moments(cpu, TRAIN_TEXT, [0, 2], dtype=torch.float64, batch_size=3)
    got, n = collect_second_moments(gpu, TRAIN_TEXT, [0, 2], dtype=torch.float64, batch_size=3)
    assert n == n_ref
    for layer in (0, 2):
        assert torch.allclose(got[layer].cpu(), ref[layer], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("family", ["gpt2", "llama"])                   # Conv1D and Linear W_out
def test_memit_update_on_cuda_equals_cpu(family, corpus, tmp_path):
    cpu, gpu = make_tiny_handle(family, device="cpu"), make_tiny_handle(family, device="cuda")
    hp = small_hparams(corpus)
    r_cpu = execute_memit(cpu, REQUESTS, hp, cov_cache_dir=tmp_path / "cpu")
    r_gpu = execute_memit(gpu, REQUESTS, hp, cov_cache_dir=tmp_path / "gpu")
    for layer in hp.layers:
        d_cpu, d_gpu = r_cpu.deltas[layer], r_gpu.deltas[layer].cpu()
        assert d_cpu.norm() > 0
        assert float((d_gpu - d_cpu).norm() / d_cpu.norm()) < 1e-3, layer


def test_apply_and_revert_on_cuda_are_bit_exact_and_atomic(corpus, tmp_path, monkeypatch):
    gpu = make_tiny_handle(device="cuda")
    snap = snapshot(gpu)
    applied = editing.edit(gpu, REQUESTS, hparams=small_hparams(corpus), cov_cache_dir=tmp_path)
    assert any(not torch.equal(gpu.hf.state_dict()[k], v) for k, v in snap.items())
    editing.revert(gpu, applied)
    assert_unchanged(gpu, snap)

    calls, real = [], editing._add_delta

    def oom_on_second_layer(w, d):
        calls.append(1)
        real(w, d)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(editing, "_add_delta", oom_on_second_layer)
    with pytest.raises(torch.OutOfMemoryError):
        editing.apply_edit(gpu, applied.result)
    assert_unchanged(gpu, snap)


@pytest.mark.slow
def test_demo_model_in_bf16_on_cuda_traces_and_edits(tmp_path):
    """The GPU default (bf16): the demo model's trace stays within bf16 rounding of the fp32 CPU
    trace, and the preset still flips 20 counterfactual facts."""
    from core.metrics import counterfact_scores
    from core.model import assets_dir, load_model
    from core.requests import load_dataset_requests
    from core.trace_avg import load_facts

    cpu = load_model("demo", device="cpu")
    gpu = load_model("demo", device="cuda")
    assert gpu.dtype == torch.bfloat16
    fact = load_facts(assets_dir() / "world" / "knowns.json")[0]
    settings = TraceSettings(samples=10, seed=0)
    ref = run_grid(prepare_trace(cpu, fact.prompt, fact.subject, fact.answer, settings=settings), "hidden").scores
    got = run_grid(prepare_trace(gpu, fact.prompt, fact.subject, fact.answer, settings=settings), "hidden").scores
    assert np.abs(got - ref).max() < 0.05

    requests, _ = load_dataset_requests(assets_dir() / "world" / "counterfact.json", 20)
    snap = snapshot(gpu)
    applied = editing.edit(gpu, requests, cov_cache_dir=tmp_path)
    try:
        post = counterfact_scores(gpu, requests)
    finally:
        editing.revert(gpu, applied)
    assert_unchanged(gpu, snap)
    assert post["ES"].mean() >= 0.9
