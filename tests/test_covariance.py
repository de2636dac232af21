"""Key statistics C = E[kkᵀ] (Eq. 15): against plain hooks, masked padding, cache hit/mismatch/corrupt."""

from __future__ import annotations

import json

import pytest
import torch

import core.covariance as cov
from core.covariance import collect_second_moments, layer_covariances, load_corpus
from core.errors import BadInputError
from tests.memit_helpers import write_corpus
from tests.tiny import TRAIN_TEXT, make_tiny_handle


def hook_second_moment(handle, texts, layer, max_tokens=256):
    """Independent: one unpadded plain-HF forward per text, a forward pre-hook on W_out."""
    keys = []
    hd = handle.mlp_out_module(layer).register_forward_pre_hook(lambda m, args: keys.append(args[0][0]))
    try:
        with torch.no_grad():
            for t in texts:
                ids = handle.tokenizer(t, truncation=True, max_length=max_tokens)["input_ids"]
                handle.hf(input_ids=torch.tensor([ids]))
    finally:
        hd.remove()
    K = torch.cat(keys).double()                                  # (N, d_mlp)
    return K.T @ K, K.shape[0]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_second_moments_equal_plain_hooks_with_padding(family):
    h = make_tiny_handle(family)
    texts = TRAIN_TEXT[:7]                                        # different lengths: padded batches
    sums, n = collect_second_moments(h, texts, [0, 2], dtype=torch.float64, batch_size=3)
    for layer in (0, 2):
        ref, n_ref = hook_second_moment(h, texts, layer)
        assert n == n_ref
        assert torch.allclose(sums[layer], ref, rtol=1e-5, atol=1e-8)
    sums32, _ = collect_second_moments(h, texts, [2], dtype=torch.float32, batch_size=7)
    assert sums32[2].dtype == torch.float32
    assert torch.allclose(sums32[2].double(), sums[2], rtol=1e-4, atol=1e-6)


def test_truncation_and_progress(tiny_handle):
    calls = []
    sums, n = collect_second_moments(tiny_handle, TRAIN_TEXT, [1], batch_size=4, max_tokens=5,
                                     progress=lambda d, t, p: calls.append((d, t, p)))
    assert n == 5 * len(TRAIN_TEXT)
    assert calls[-1] == (len(TRAIN_TEXT), len(TRAIN_TEXT), "covariance")
    ref, _ = hook_second_moment(tiny_handle, TRAIN_TEXT, 1, max_tokens=5)
    assert torch.allclose(sums[1].double(), ref, rtol=1e-4, atol=1e-6)


def test_layer_covariances_mean_dtype_and_cache_hit(tiny_handle, tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "c.txt")
    stats = layer_covariances(tiny_handle, [0, 1], corpus=corpus, n_samples=10, dtype="float64",
                              cache_dir=tmp_path / "stats")
    texts = load_corpus(corpus, 10).texts
    assert len(texts) == 10 and stats[0].n_records == 10
    ref, n = hook_second_moment(tiny_handle, texts, 1)
    assert stats[1].C.dtype == torch.float64 and stats[1].n_tokens == n
    assert torch.allclose(stats[1].C, ref / n, rtol=1e-6, atol=1e-10)
    assert not stats[1].from_cache

    def no_forward(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(cov, "collect_second_moments", no_forward)
    again = layer_covariances(tiny_handle, [0, 1], corpus=corpus, n_samples=10, dtype="float64",
                              cache_dir=tmp_path / "stats")
    assert again[1].from_cache and torch.equal(again[1].C, stats[1].C)
    assert again[1].note is None


def _one_cache(tiny_handle, tmp_path, corpus, **kw):
    return layer_covariances(tiny_handle, [1], corpus=corpus, n_samples=10, cache_dir=tmp_path / "stats", **kw)[1]


def test_other_settings_and_other_weights_do_not_hit(tiny_handle, tmp_path):
    corpus = write_corpus(tmp_path / "c.txt")
    first = _one_cache(tiny_handle, tmp_path, corpus)
    assert not _one_cache(tiny_handle, tmp_path, corpus, dtype="float64").from_cache
    assert not layer_covariances(tiny_handle, [1], corpus=corpus, n_samples=9,
                                 cache_dir=tmp_path / "stats")[1].from_cache
    other = make_tiny_handle("gpt2", seed=1)                      # same name, other weights
    assert not _one_cache(other, tmp_path, corpus).from_cache
    (tmp_path / "c.txt").write_text("Completely different text.\nAnother line here.\n")
    changed = _one_cache(tiny_handle, tmp_path, corpus)           # corpus content changed
    assert not changed.from_cache and changed.corpus != first.corpus


def test_mismatched_cache_header_is_recomputed(tiny_handle, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    corpus = write_corpus(tmp_path / "c.txt")
    first = _one_cache(tiny_handle, tmp_path, corpus)
    with safe_open(first.path, framework="pt") as f:
        header = json.loads(f.metadata()["workbench"])
    header["base_hash"] = "0" * 32                                # a file of another model
    save_file({"C": torch.zeros_like(first.C)}, first.path, metadata={"workbench": json.dumps(header)})
    again = _one_cache(tiny_handle, tmp_path, corpus)
    assert not again.from_cache and "does not match (base_hash)" in again.note
    assert torch.allclose(again.C, first.C)
    assert _one_cache(tiny_handle, tmp_path, corpus).from_cache   # rewritten correctly


@pytest.mark.parametrize("damage", ["garbage", "truncated", "nan"])
def test_corrupt_cache_is_recomputed(tiny_handle, tmp_path, damage):
    from safetensors import safe_open
    from safetensors.torch import save_file

    corpus = write_corpus(tmp_path / "c.txt")
    first = _one_cache(tiny_handle, tmp_path, corpus)
    data = open(first.path, "rb").read()
    if damage == "garbage":
        open(first.path, "wb").write(b"not a safetensors file")
    elif damage == "truncated":
        open(first.path, "wb").write(data[: len(data) // 2])
    else:
        with safe_open(first.path, framework="pt") as f:
            meta = f.metadata()
        save_file({"C": torch.full_like(first.C, float("nan"))}, first.path, metadata=meta)
    again = _one_cache(tiny_handle, tmp_path, corpus)
    assert not again.from_cache
    assert ("unreadable" if damage != "nan" else "corrupt") in again.note
    assert torch.allclose(again.C, first.C)


def test_corpus_sources(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": "One line."}\n{"text": ""}\n{"text": "Two."}\n')
    assert load_corpus(str(tmp_path / "c.jsonl"), 10).texts == ["One line.", "Two."]
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(BadInputError, match="no 'text' field"):
        load_corpus(str(tmp_path / "bad.jsonl"), 10)
    with pytest.raises(BadInputError, match="not found"):
        load_corpus(str(tmp_path / "missing.txt"), 10)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(BadInputError, match="no text"):
        load_corpus(str(tmp_path / "empty.txt"), 10)


def test_hub_dataset_offline_falls_back_to_demo_corpus_with_a_note(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    if not cov.demo_corpus_path().is_file():
        pytest.skip("demo world not built")
    c = load_corpus("wikitext", 5)
    assert c.label.startswith("demo:") and len(c.texts) == 5
    assert "dataset 'wikitext' is not available" in c.note and "demo corpus" in c.note


def test_records_longer_than_the_context_are_cut_to_it(tiny_handle):
    """A corpus line longer than the model's context (128 positions here) must not crash the
    statistics: records are truncated to the context, and the sum equals the hook reference."""
    long_text = " ".join(TRAIN_TEXT * 12)          # several hundred tokens
    assert len(tiny_handle.tokenizer(long_text)["input_ids"]) > tiny_handle.max_length
    sums, n = collect_second_moments(tiny_handle, [long_text], [1], max_tokens=1024)
    ref, n_ref = hook_second_moment(tiny_handle, [long_text], 1, max_tokens=tiny_handle.max_length)
    assert n == n_ref == tiny_handle.max_length
    assert torch.allclose(sums[1].double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("block", [1, 3, 4, 10, 64])
def test_gram_of_the_upper_block_triangle_equals_the_full_product(block):
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 10, generator=g, dtype=torch.float64) for n in (5, 1, 17)]
    acc = None
    for K in batches:
        acc = cov.add_gram(acc, K, block)
    C = cov.symmetric(acc, block)
    K = torch.cat(batches)
    assert torch.allclose(C, K.T @ K, rtol=1e-12, atol=1e-12)
    assert torch.equal(C, C.T)                                   # exactly symmetric


def test_second_moments_in_several_blocks_equal_plain_hooks(tiny_handle, monkeypatch):
    monkeypatch.setattr(cov, "GRAM_BLOCK", 7)                    # d_mlp of the tiny model: many blocks
    sums, n = collect_second_moments(tiny_handle, TRAIN_TEXT[:6], [1], dtype=torch.float64, batch_size=4)
    ref, n_ref = hook_second_moment(tiny_handle, TRAIN_TEXT[:6], 1)
    assert n == n_ref and sums[1].shape[0] > 7 * 2
    assert torch.allclose(sums[1], ref, rtol=1e-5, atol=1e-8) and torch.equal(sums[1], sums[1].T)
