"""Causal tracing: nnsight implementation vs an independent plain-PyTorch-hook implementation.

The reference below follows Meng et al. (2022) `trace_with_patch` literally: one forward per
restoration, forward hooks on the HF modules (no nnsight), noise added to the subject-token
embeddings, the restored state copied from a clean run recorded with hooks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.arch import get_path
from core.errors import BadInputError
from core.tracing import (
    KINDS, TraceSettings, patched_prob, prepare_trace, run_grid, trace, trace_kinds, window_layers,
)
from core.tracing_severed import run_severed, trace_severed
from tests.trace_helpers import PROMPT, SETTINGS, STRONG, SUBJECT, sharpen, strong_prep



# ---- the independent reference --------------------------------------------------------------

def _module(hf, spec, layer: int, kind: str):
    block = get_path(hf, spec.layers)[layer]
    return {"hidden": block, "mlp": get_path(block, spec.mlp), "attn": get_path(block, spec.attn)}[kind]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def hook_run(handle, ids, span, noise, restore, freeze=None, record=None):
    """One plain HF forward of len(noise) corrupted rows (noise=None: one clean row).

    restore: {(kind, layer): [(token, value (d,))]} overwritten in every row;
    freeze:  {(kind, layer): [(token, values (S, d))]} row s gets values[s];
    record:  list of (kind, layer) whose outputs (B, T, d) are returned.
    Returns (next-token probs at the last position (B, V), recorded outputs).
    """
    hf, spec = handle.hf, handle.spec
    rows = 1 if noise is None else noise.shape[0]
    hooks, recorded = [], {}

    def embed_hook(mod, inp, out):
        out = out.clone()
        if noise is not None:
            out[:, span[0]:span[1]] += noise
        return out

    hooks.append(get_path(hf, spec.embed).register_forward_hook(embed_hook))
    keys = set(restore) | set(freeze or {}) | set(record or [])
    for kind, layer in keys:
        def hook(mod, inp, out, kind=kind, layer=layer):
            h = _first(out)
            for t, v in restore.get((kind, layer), []):
                h[:, t] = v
            for t, vs in (freeze or {}).get((kind, layer), []):
                h[:, t] = vs
            if (kind, layer) in (record or []):
                recorded[(kind, layer)] = h.detach().clone()
            return out
        hooks.append(_module(hf, spec, layer, kind).register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = hf(input_ids=ids.expand(rows, -1)).logits[:, -1]
    finally:
        for h in hooks:
            h.remove()
    return torch.softmax(logits.float(), -1), recorded


def reference_setup(handle, prompt, subject, settings):
    """Clean states, answer, noise and corrupted probability, all computed with hooks."""
    tok = handle.tokenizer
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    enc = tok(prompt, return_offsets_mapping=True)
    c0 = prompt.index(subject)
    c1 = c0 + len(subject)
    toks = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < c1 and b > c0]
    span = (toks[0], toks[-1] + 1)
    L = handle.n_layers
    rec = [(k, j) for k in KINDS for j in range(L)]
    probs, clean = hook_run(handle, ids, span, None, {}, record=rec)
    answer = int(probs[0].argmax())
    E = handle.hf.get_input_embeddings().weight
    sigma = float(E[ids[0, span[0]:span[1]]].float().std())
    gen = torch.Generator().manual_seed(settings.seed)
    noise = settings.noise * sigma * torch.randn(settings.samples, span[1] - span[0], handle.d_model,
                                                 generator=gen)
    p_corrupt, frozen = hook_run(handle, ids, span, noise, {}, record=rec)
    return dict(ids=ids, span=span, answer=answer, clean=clean, noise=noise, frozen=frozen,
                clean_prob=float(probs[0, answer]), corrupted_prob=float(p_corrupt[:, answer].mean()))


def reference_grid(handle, ref, kind, window):
    T, L = ref["ids"].shape[1], handle.n_layers
    scores = np.zeros((T, L))
    for t in range(T):
        for layer in range(L):
            targets = [layer] if kind == "hidden" else window_layers(layer, window, L)
            restore = {(kind, j): [(t, ref["clean"][(kind, j)][0, t])] for j in targets}
            p, _ = hook_run(handle, ref["ids"], ref["span"], ref["noise"], restore)
            scores[t, layer] = float(p[:, ref["answer"]].mean())
    return scores


# ---- equivalence with the reference -----------------------------------------------------------

def test_trace_matches_hook_reference(family_handle):
    handle = sharpen(family_handle)
    ref = reference_setup(handle, PROMPT, SUBJECT, SETTINGS)
    results = trace_kinds(handle, PROMPT, SUBJECT, settings=SETTINGS)
    # The batched grid fed only the tokens after each restored one (cached prefix) here.
    assert prepare_trace(handle, PROMPT, SUBJECT, settings=SETTINGS).corrupted_kv is not None
    for kind in KINDS:
        r = results[kind]
        assert r.answer_id == ref["answer"]
        assert r.subject_span == ref["span"]
        assert r.clean_prob == pytest.approx(ref["clean_prob"], abs=1e-5)
        assert r.corrupted_prob == pytest.approx(ref["corrupted_prob"], abs=1e-5)
        expected = reference_grid(handle, ref, kind, SETTINGS.window)
        np.testing.assert_allclose(r.scores, expected, atol=1e-5, rtol=0)
    # The comparison means something: restorations move P(answer) by ≫ the tolerance.
    assert np.ptp(results["hidden"].scores) > 1e-3


def test_severed_matches_hook_reference(family_handle):
    handle = sharpen(family_handle)
    ref = reference_setup(handle, PROMPT, SUBJECT, SETTINGS)
    res = trace_severed(handle, PROMPT, SUBJECT, settings=SETTINGS)
    S_tok, L = ref["span"][1] - 1, handle.n_layers
    assert res.token == S_tok
    for mode, curve in (("normal", res.normal), ("mlp", res.mlp_severed), ("attn", res.attn_severed)):
        expected = []
        for layer in range(L):
            restore = {("hidden", layer): [(S_tok, ref["clean"][("hidden", layer)][0, S_tok])]}
            freeze = {} if mode == "normal" else {
                (mode, j): [(S_tok, ref["frozen"][(mode, j)][:, S_tok])] for j in range(L)}
            p, _ = hook_run(handle, ref["ids"], ref["span"], ref["noise"], restore, freeze=freeze)
            expected.append(float(p[:, ref["answer"]].mean()))
        np.testing.assert_allclose(curve, expected, atol=1e-5, rtol=0, err_msg=mode)


# ---- invariants ---------------------------------------------------------------------------------

@pytest.fixture
def prep(tiny_handle):
    return strong_prep(tiny_handle)


def test_restore_everything_gives_clean_nothing_gives_corrupted(prep):
    T, L = prep.n_tokens, prep.handle.n_layers
    assert patched_prob(prep, []) == pytest.approx(prep.corrupted_prob, abs=1e-6)
    everything = [("hidden", t, layer) for t in range(T) for layer in range(L)]
    assert patched_prob(prep, everything) == pytest.approx(prep.clean_prob, abs=1e-5)
    assert abs(prep.clean_prob - prep.corrupted_prob) > 2e-3
    grid = run_grid(prep, "hidden")
    # The last token's final hidden state alone determines the prediction.
    assert grid.scores[T - 1, L - 1] == pytest.approx(prep.clean_prob, abs=1e-5)
    # Tokens before the subject never see the noise: restoring them changes nothing.
    assert prep.span.start > 0
    np.testing.assert_allclose(grid.scores[:prep.span.start], prep.corrupted_prob, atol=1e-6)


def test_batched_grid_equals_per_cell_loop(prep):
    small = TraceSettings(**{**STRONG.__dict__, "memory_mb": 0.05})  # forces several chunks
    prep_small = prepare_trace(prep.handle, prep.prompt, prep.subject, settings=small)
    for kind in KINDS:
        batched = run_grid(prep, kind)
        chunked = run_grid(prep_small, kind)
        loop = run_grid(prep, kind, batched=False)              # every cell, one full forward each
        full = run_grid(prep, kind, reuse_prefix=False)       # batched, every block and token run
        no_cache = run_grid(prep, kind, prune_positions=False)  # blocks skipped, every token fed
        plain = run_grid(prep, kind, shortcuts=False)           # no filled or shared cells
        assert loop.skipped_cells == 0 and loop.shared_cells == 0
        assert batched.skipped_cells > 0
        for other in (batched, full, no_cache, plain, chunked):
            np.testing.assert_allclose(other.scores, loop.scores, atol=1e-6, rtol=0)
    s_batched, s_loop = run_severed(prep), run_severed(prep, batched=False)
    s_full = run_severed(prep, reuse_prefix=False)
    for name in ("normal", "mlp_severed", "attn_severed"):
        np.testing.assert_allclose(getattr(s_batched, name), getattr(s_loop, name), atol=1e-6)
        np.testing.assert_allclose(getattr(s_full, name), getattr(s_loop, name), atol=1e-6)


def test_severed_normal_is_hidden_trace_row(prep):
    grid = run_grid(prep, "hidden")
    sev = run_severed(prep)
    np.testing.assert_allclose(sev.normal, grid.scores[prep.span.last], atol=1e-6)
    np.testing.assert_allclose(sev.gap, sev.normal - sev.mlp_severed)
    # Severing changes something at some layer below the last (it freezes real computation).
    assert np.abs(sev.mlp_severed - sev.normal)[:-1].max() > 1e-6


def test_progress_and_progress_totals(prep):
    seen = []
    run_grid(prep, "mlp", progress=lambda done, total, phase: seen.append((done, total, phase)))
    T, L = prep.n_tokens, prep.handle.n_layers
    assert seen[-1] == (T * L, T * L, "mlp")
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)


def test_answer_argument_and_noise_settings(tiny_handle):
    handle = sharpen(tiny_handle)
    r = trace(handle, PROMPT, SUBJECT, answer="the", kind="hidden", settings=SETTINGS)
    assert r.answer.strip() == "the"
    assert r.settings["noise_level"] > 0
    absolute = TraceSettings(noise=0.5, sigma=1.0, samples=2, window=1)
    r2 = trace(handle, PROMPT, SUBJECT, kind="hidden", settings=absolute)
    assert r2.settings["noise_level"] == pytest.approx(0.5)
    again = trace(handle, PROMPT, SUBJECT, kind="hidden", settings=absolute)
    np.testing.assert_array_equal(r2.scores, again.scores)   # seeded: reproducible
    d = r2.to_dict()
    assert len(d["scores"]) == len(r2.tokens) and d["kind"] == "hidden"


def test_window_layers():
    assert list(window_layers(0, 10, 12)) == [0, 1, 2, 3, 4]
    assert list(window_layers(6, 10, 12)) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert list(window_layers(11, 10, 12)) == [6, 7, 8, 9, 10, 11]
    assert list(window_layers(3, 1, 12)) == [3]
    assert list(window_layers(3, 3, 12)) == [2, 3, 4]


# ---- bad input: a clear error naming the field, and nothing runs ---------------------------------

@pytest.mark.parametrize("kwargs, field", [
    (dict(prompt="", subject="Miles"), "prompt"),
    (dict(prompt="   ", subject="Miles"), "prompt"),
    (dict(subject="Paris"), "subject"),
    (dict(prompt="Miles Davis " * 200, subject="Miles"), "prompt"),
    (dict(answer=""), "answer"),
    (dict(answer="   "), "answer"),
    (dict(answer="<|endoftext|>"), "answer"),  # only a special token: nothing to score
    (dict(settings=TraceSettings(noise=0)), "noise"),
    (dict(settings=TraceSettings(noise=-1.0)), "noise"),
    (dict(settings=TraceSettings(noise=float("nan"))), "noise"),
    (dict(settings=TraceSettings(window=0)), "window"),
    (dict(settings=TraceSettings(samples=0)), "samples"),
    (dict(settings=TraceSettings(sigma=0.0)), "sigma"),
    (dict(kind="neurons"), "kind"),
])
def test_bad_input_names_field_and_runs_nothing(tiny_handle, monkeypatch, kwargs, field):
    calls = []
    original = tiny_handle.model.trace
    monkeypatch.setattr(tiny_handle.model, "trace", lambda *a, **k: calls.append(1) or original(*a, **k))
    args = {"prompt": PROMPT, "subject": SUBJECT, **kwargs}
    with pytest.raises(BadInputError) as err:
        trace(tiny_handle, args.pop("prompt"), args.pop("subject"), **args)
    assert err.value.field == field
    assert calls == []


def test_run_counter_sees_valid_runs(tiny_handle, monkeypatch):
    """Control for the test above: the patched `trace` does see the forwards of a valid trace."""
    calls = []
    original = tiny_handle.model.trace
    monkeypatch.setattr(tiny_handle.model, "trace", lambda *a, **k: calls.append(1) or original(*a, **k))
    trace(tiny_handle, PROMPT, SUBJECT, settings=TraceSettings(samples=1, window=1))
    assert len(calls) >= 3   # clean run, corrupted baseline, at least one grid chunk
