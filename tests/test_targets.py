"""Targets z (Eq. 16): batched equals serial and a plain-hook reference, batching by tail length,
early stopping, shared keys share one δ, seeded context prompts."""

from __future__ import annotations

import pytest
import torch

from core.subject import locate_subject
from core.targets import compute_targets
from tests.memit_helpers import REQUESTS, small_hparams, write_corpus
from tests.tiny import make_tiny_handle


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus.txt")


def reference_z(handle, req, layer, templates, hp) -> torch.Tensor:
    """One edit the public implementation's way: unpadded plain-HF forwards, a forward hook,
    torch.optim.Adam — independent of the batched code."""
    tok, hf = handle.tokenizer, handle.hf
    texts = [c.replace("{}", req.prompt, 1).replace("{}", req.subject, 1) for c in templates]
    rows = []
    for text in texts:
        full = tok(text + " " + req.target_new)["input_ids"]
        n_prompt = len(tok(text)["input_ids"])
        rows.append((full[:-1], full[n_prompt:], locate_subject(tok, text, req.subject).last, n_prompt))
    kl_text = f"{req.subject} is a"
    kl_ids, kl_pos = tok(kl_text)["input_ids"], locate_subject(tok, kl_text, req.subject).last
    delta = torch.zeros(handle.d_model, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    state = {}

    def run(ids, pos):
        def hook(module, inputs, output):
            state.setdefault("h", output[0, pos].detach().clone())
            out = output.clone()
            out[0, pos] = out[0, pos] + delta
            return out
        hd = handle.hf_layer(layer).register_forward_hook(hook)
        try:
            return hf(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        finally:
            hd.remove()

    kl_init = None
    for it in range(hp.v_steps):
        opt.zero_grad()
        nll = 0
        for ids, target, pos, n_prompt in rows:
            lp = run(ids, pos)
            nll = nll - torch.stack([lp[n_prompt - 1 + j, t] for j, t in enumerate(target)]).mean()
        nll = nll / len(rows)
        kl_lp = run(kl_ids, kl_pos)[kl_pos]
        kl_init = kl_lp.detach() if kl_init is None else kl_init
        kl = hp.kl_factor * (kl_lp.exp() * (kl_lp - kl_init)).sum()
        h0 = state["h"]
        loss = nll + kl + hp.v_weight_decay * delta.norm() / h0.norm() ** 2
        if loss < hp.v_loss_tol or it == hp.v_steps - 1:
            break
        loss.backward()
        opt.step()
        with torch.no_grad():
            max_norm = hp.clamp_norm_factor * h0.norm()
            if delta.norm() > max_norm:
                delta *= max_norm / delta.norm()
    return state["h"] + delta.detach()


def test_batches_group_edits_by_tail_length(monkeypatch, corpus):
    """Chunks hold edits with similar token counts after the subject (less left padding fed)."""
    import core.targets as targets

    h = make_tiny_handle("gpt2")
    tails = [targets.tail_tokens(h.tokenizer, r) for r in REQUESTS]
    rest = REQUESTS[0].prompt[REQUESTS[0].prompt.index("{}") + 2:] + " " + REQUESTS[0].target_new
    assert tails[0] == len(h.tokenizer(rest, add_special_tokens=False)["input_ids"])
    seen = []
    original = targets._optimise
    monkeypatch.setattr(targets, "_optimise", lambda hd, reqs, *a: seen.append(
        [targets.tail_tokens(hd.tokenizer, r) for r in reqs]) or original(hd, reqs, *a))
    hp = small_hparams(corpus, v_steps=2)
    res = compute_targets(h, REQUESTS, 1, ["{}"], hp, batch_size=2)
    assert [t for chunk in seen for t in chunk] == sorted(tails) and len(seen) == 2
    ref = compute_targets(h, REQUESTS, 1, ["{}"], hp, batch_size=1)       # order does not matter
    assert torch.allclose(res.z, ref.z, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gptj", "gpt_neox", "qwen2"])
def test_batched_z_equals_serial_and_plain_hook_reference(family, corpus):
    h = make_tiny_handle(family)
    hp = small_hparams(corpus, v_loss_tol=0.0)
    templates = hp.context_templates
    batched = compute_targets(h, REQUESTS, 1, templates, hp, batch_size=0)
    serial = compute_targets(h, REQUESTS, 1, templates, hp, batch_size=1)
    chunks = compute_targets(h, REQUESTS, 1, templates, hp, batch_size=3)
    assert batched.steps == serial.steps == [hp.v_steps - 1] * len(REQUESTS)
    assert (batched.z - batched.h).norm(dim=1).min() > 1e-3                     # δ really moved
    # after step 0 (one full forward) only tokens from the earliest last-subject token on are fed
    first = compute_targets(h, REQUESTS, 1, templates, hp.replace(v_steps=1), batch_size=0)
    assert first.forwards == 1 and batched.forwards == hp.v_steps
    assert batched.tokens < batched.forwards * first.tokens               # (equal without reuse)
    for other in (serial, chunks):
        assert torch.allclose(batched.z, other.z, atol=1e-5, rtol=1e-4)
        assert torch.allclose(torch.tensor(batched.loss), torch.tensor(other.loss), atol=1e-5)
    for i, req in enumerate(REQUESTS):
        ref = reference_z(h, req, 1, templates, hp)
        assert torch.allclose(batched.z[i], ref, atol=1e-5, rtol=1e-4), i


def test_early_stopped_edits_stop_moving(corpus):
    h = make_tiny_handle("gpt2")
    hp = small_hparams(corpus, v_steps=6)
    first = compute_targets(h, REQUESTS, 1, hp.context_templates, hp.replace(v_steps=1), batch_size=0)
    losses = sorted(first.loss)
    tol = (losses[0] + losses[1]) / 2                                           # only the easiest stops
    res = compute_targets(h, REQUESTS, 1, hp.context_templates, hp.replace(v_loss_tol=tol), batch_size=0)
    easiest = first.loss.index(losses[0])
    assert res.steps[easiest] == 0 and torch.equal(res.z[easiest], res.h[easiest])
    assert all(s == hp.v_steps - 1 for i, s in enumerate(res.steps) if i != easiest)
    i = 1 if easiest != 1 else 2
    alone = compute_targets(h, [REQUESTS[i]], 1, hp.context_templates, hp.replace(v_loss_tol=tol))
    assert torch.allclose(alone.z[0], res.z[i], atol=1e-5, rtol=1e-4)           # others unaffected


def test_generated_context_templates_are_seeded(tiny_handle):
    from core.targets import generate_context_templates

    a = generate_context_templates(tiny_handle, 3, 6, seed=0)
    assert a == generate_context_templates(tiny_handle, 3, 6, seed=0)
    assert a[0] == "{}" and len(a) == 4 and all(t.endswith(". {}") and t.count("{}") == 1 for t in a[1:])
    assert a[1].startswith("The") and a[2].startswith("Therefore")
    assert a != generate_context_templates(tiny_handle, 3, 6, seed=1)


def test_edits_with_the_same_subject_key_share_one_delta(corpus):
    """Two relations of one subject at the start of the prompt have identical keys; they get one
    z (optimised for both), batched and serially alike."""
    from core.requests import EditRequest

    h = make_tiny_handle("gpt2")
    hp = small_hparams(corpus, v_loss_tol=0.0)
    reqs = [EditRequest("{} plays the", "Miles Davis", "chess"), REQUESTS[1],
            EditRequest("{} works for", "Miles Davis", "Toyota"),
            EditRequest("The teacher of {} is", "Miles Davis", "Kara")]        # other key: own δ
    b = compute_targets(h, reqs, 1, hp.context_templates, hp, batch_size=0)
    s = compute_targets(h, reqs, 1, hp.context_templates, hp, batch_size=1)
    assert torch.equal(b.z[0], b.z[2]) and not torch.allclose(b.z[0], b.z[3])
    assert torch.allclose(b.z, s.z, atol=1e-5, rtol=1e-4)
    assert b.loss[0] != b.loss[2]                                                # own NLL per edit


def _batch_cost(plan, tails, sizes, prompts, step):
    return sum(step + sum(sizes[g] * prompts + 1 for g in b) * (max(tails[g] for g in b) + 1) for b in plan)


@pytest.mark.parametrize("seed", range(6))
def test_plan_batches_is_the_cheapest_cut_at_tail_boundaries(seed):
    """Against brute force over every way to cut the tail-sorted groups between distinct tail
    lengths (each run filled up to the cap in order), and against the plans one would write by hand."""
    import itertools
    import random

    from core.target_batches import fill_in_order as _fill, plan_batches

    assert _fill([1, 0, 2, 3], [1, 3, 1, 1], 2) == [[1], [0, 2], [3]]        # a group over the cap: alone
    rng = random.Random(seed)
    n, cap, prompts = rng.randint(5, 14), rng.choice([2, 3, 5, 64]), rng.choice([1, 6, 11])
    tails = [rng.randint(2, 9) for _ in range(n)]
    sizes = [rng.choice([1, 1, 1, 2, 4]) for _ in range(n)]
    order = sorted(range(n), key=lambda g: (tails[g], g))
    values = sorted(set(tails))
    for step in (0.0, 50.0, 400.0, 1e6):
        plan = plan_batches(tails, sizes, prompts, cap, step)
        assert sorted(g for b in plan for g in b) == list(range(n))             # every group once
        assert all(sum(sizes[g] for g in b) <= cap or len(b) == 1 for b in plan)
        brute = min(
            _batch_cost([p for run in runs for p in _fill(run, sizes, cap)], tails, sizes, prompts, step)
            for cuts in itertools.product([False, True], repeat=len(values) - 1)
            for runs in [[[g for g in order if lo <= tails[g] <= hi] for lo, hi in zip(
                [values[0]] + [v for v, c in zip(values[1:], cuts) if c],
                [v for v, c in zip(values[:-1], cuts) if c] + [values[-1]])]])
        cost = _batch_cost(plan, tails, sizes, prompts, step)
        assert cost == pytest.approx(brute)
        assert cost <= _batch_cost(_fill(order, sizes, cap), tails, sizes, prompts, step) + 1e-9
        assert cost <= _batch_cost([[g] for g in order], tails, sizes, prompts, step) + 1e-9
    free = plan_batches(tails, sizes, prompts, cap, 0.0)                        # no fixed cost:
    assert all(len({tails[g] for g in b}) == 1 for b in free)                    # no padding at all
    assert len(plan_batches([3] * 10, [1] * 10, 6, 4, 1e6)) == 3                # fixed cost: fewest


def test_batches_are_planned_by_the_cost_model(monkeypatch):
    """compute_targets batches as plan_batches says, with the step cost scaled to the model and
    device (cheap steps on a wide CPU model, ×1000 on a GPU); batch_size 0 is one batch."""
    import core.targets as targets
    from core.target_batches import STEP_COST
    from core.tracing_cache import overhead_scale

    calls = []
    monkeypatch.setattr(targets, "plan_batches", lambda *a: calls.append(a) or [[g] for g in range(len(a[0]))])
    monkeypatch.setattr(targets, "_optimise", lambda hd, reqs, *a, **k: {
        "z": torch.zeros(len(reqs), hd.d_model), "h": torch.zeros(len(reqs), hd.d_model),
        "loss": [0.0] * len(reqs), "nll": [0.0] * len(reqs), "kl": [0.0] * len(reqs),
        "steps": [0] * len(reqs), "tokens": 0, "forwards": 1})
    h = make_tiny_handle("gpt2")
    hp = small_hparams("unused", v_steps=2)
    res = compute_targets(h, REQUESTS, 1, ["{}", "A. {}"], hp, batch_size=3)
    tails, sizes, prompts, cap, step = calls[0]
    assert tails == [targets.tail_tokens(h.tokenizer, r) for r in REQUESTS] and sizes == [1] * len(REQUESTS)
    assert (prompts, cap) == (2, 3)
    assert step == pytest.approx(STEP_COST * overhead_scale(h.d_model, h.d_mlp, "cpu"))
    assert res.forwards == len(REQUESTS)                                         # one call per planned batch
    calls.clear()
    assert compute_targets(h, REQUESTS, 1, ["{}"], hp, batch_size=0).forwards == 1 and not calls
