"""Target vectors zᵢ = hᵢᴸ + δᵢ for MEMIT (paper Eq. 16), optimised for many edits at once.

For edit i, δᵢ is added to the output of block L at the last subject token of every prompt of
that edit, and minimises

    loss_i = 1/P Σⱼ NLL(" " + oᵢ | xⱼ ⊕ p(sᵢ, rᵢ))                 # teacher-forced, mean over tokens
           + kl_factor · KL(p_δ(· | "{sᵢ} is a") ‖ p_0(· | "{sᵢ} is a"))   # at the last subject token
           + v_weight_decay · ‖δᵢ‖ / ‖hᵢᴸ‖²

with Adam, ‖δᵢ‖ clamped to clamp_norm_factor·‖hᵢᴸ‖ after each step, and δᵢ frozen once loss_i
is below v_loss_tol (as the public implementation does, one edit at a time). Here all edits of
a batch × all their prompts form ONE padded forward per step: rows never interact, so edit i's
gradient is exactly its own; Adam is kept per edit (own step count), so an edit that stops early
stops moving. Edits whose subject keys coincide (same subject after the same text, e.g. two
relations of "{} …" prompts: `key_group`) share one δ, optimised for the sum of their NLLs — Eq. 14
can give one key only one value. `batch_size=1` runs the same code one key group at a time (the
serial mode, for checks and benchmarks). Interventions go through nnsight; the forward stops after the final norm and
the head is applied to the target and KL positions only. Nothing before δ depends on δ, so after
the first step (δ = 0, the unedited model) only what follows it is recomputed:
  * blocks 0 … L are skipped (nnsight `.skip`): block L's cached output + δ feeds block L+1;
  * tokens before the earliest last-subject token of the batch are not fed again: blocks > L
    read their keys and values from the first step's cache (HF `DynamicCache`, explicit
    position ids). The context prefixes ("<text>. {}") are most of every row, so a step costs
    about (prompt rest + target) tokens × (blocks after L) per row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from transformers import DynamicCache

from core.arch import get_path
from core.model import position_ids_for
from core.requests import EditRequest
from core.target_batches import STEP_COST, plan_batches
from core.tracing_cache import cache_kv, overhead_scale

CONTEXT_STARTS = ("The", "Therefore", "Because", "I", "You")
KL_TEMPLATE = "{} is a"
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass
class TargetResult:
    z: torch.Tensor          # (n, d) fp32: hᴸ + δ for each edit
    h: torch.Tensor          # (n, d) fp32: hᴸ at the last subject token of the bare prompt
    loss: list[float]        # final total loss per edit
    nll: list[float]
    kl: list[float]
    steps: list[int]         # Adam steps taken
    seconds: float
    tokens: int = 0          # non-pad token positions run forward (all steps; for FLOP counts)
    forwards: int = 0        # traced forward (+ backward) passes


# ---- prompts and tokens -------------------------------------------------------------------------

def place(template: str, prompt: str, subject: str) -> tuple[str, int, int]:
    """Context template ("… {}") ∘ prompt ("{} plays") ∘ subject -> (text, subject chars [c0, c1))."""
    t = template.replace("{}", prompt, 1)
    c0 = t.index("{}")
    return t[:c0] + subject + t[c0 + 2:], c0, c0 + len(subject)


def encode(tokenizer, text: str, c0: int | None, c1: int | None, target: str | None = None) -> dict:
    """Token ids of text (+ " " + target), the last subject token, and the target's positions.

    Returns {"ids": input ids (the last target token is dropped: teacher forcing), "subj": index
    (None when c0 is None), "tgt_pos": logit positions that predict the target tokens, "tgt_ids":
    those tokens}. Offsets decide which tokens are the subject's and which the target's, so BOS
    tokens, word-initial spaces and SentencePiece "▁" are handled alike.
    """
    full = text + (" " + target.strip() if target else "")
    enc = tokenizer(full, return_offsets_mapping=True, add_special_tokens=True)
    ids, offs = list(enc["input_ids"]), enc["offset_mapping"]
    last_subj = None
    if c0 is not None:
        subj = [i for i, (a, b) in enumerate(offs) if b > a and a < c1 and b > c0]
        if not subj:
            raise ValueError(f"no token covers the subject in '{text}'")
        last_subj = subj[-1]
    out = {"ids": ids, "subj": last_subj, "tgt_pos": [], "tgt_ids": []}
    if target:
        # prompt = up to its last token with characters of `text`; target = from there to the last
        # token with characters (a space token trimmed to zero width belongs to the target)
        n_prompt = 1 + max((i for i, (a, b) in enumerate(offs) if b > a and b <= len(text)), default=-1)
        last = max((i for i, (a, b) in enumerate(offs) if b > a), default=-1)
        tgt = list(range(n_prompt, last + 1))
        if not tgt or tgt[0] < 1 or (last_subj is not None and tgt[0] <= last_subj):
            raise ValueError(f"the target '{target}' has no tokens after '{text}'")
        out["ids"] = ids[:tgt[-1]]
        out["tgt_pos"] = [i - 1 for i in tgt]
        out["tgt_ids"] = [ids[i] for i in tgt]
    return out


def pad_left(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Left-pad token lists -> (ids (B, T), mask (B, T), pad length per row)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    pads = []
    for i, r in enumerate(rows):
        p = width - len(r)
        ids[i, p:] = torch.tensor(r, dtype=torch.long)
        mask[i, p:] = 1
        pads.append(p)
    return ids.to(device), mask.to(device), pads


def final_norm(handle):
    """Envoy of the final norm: its output, put through the head, gives the logits."""
    return get_path(handle.model, handle.spec.final_norm)


def head(handle) -> torch.nn.Module:
    """The unembedding module (applied by hand to the few positions a loss needs, instead of the
    model computing logits for every position: B·T·V floats avoided)."""
    return get_path(handle.hf, handle.spec.lm_head)


# ---- context prefixes ---------------------------------------------------------------------------

@torch.no_grad()
def generate_context_templates(handle, n: int = 5, length: int = 10, seed: int = 0) -> list[str]:
    """["{}"] + n prefixes "<model text>. {}" sampled from the model (top-5, seeded), as the
    reference does (starts "The", "Therefore", "Because", "I", "You"; ~`length` tokens each)."""
    templates = ["{}"]
    if n == 0:
        return templates
    tok = handle.tokenizer
    gen = torch.Generator().manual_seed(seed)
    starts = [CONTEXT_STARTS[i % len(CONTEXT_STARTS)] for i in range(n)]
    rows = [tok(s)["input_ids"] for s in starts]
    ids, mask, _ = pad_left(rows, tok.pad_token_id, handle.device)
    with handle.lock:
        for _ in range(max(1, length - 1)):
            logits = handle.hf(input_ids=ids, attention_mask=mask,
                               position_ids=position_ids_for(mask)).logits[:, -1].float().cpu()
            top = logits.topk(5, dim=-1)
            pick = torch.multinomial(top.values.softmax(-1), 1, generator=gen)      # (n, 1)
            nxt = top.indices.gather(1, pick).to(handle.device)
            ids = torch.cat([ids, nxt], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
    for i in range(n):
        text = tok.decode(ids[i][mask[i].bool()], skip_special_tokens=True)
        text = " ".join(text.replace("{", " ").replace("}", " ").split())
        templates.append(text + ". {}")
    return templates


def ensure_bare(templates: list[str]) -> list[str]:
    """The bare prompt "{}" first (h and the keys' first group are read there)."""
    return ["{}"] + [t for t in templates if t != "{}"]


# ---- the optimisation ---------------------------------------------------------------------------

def key_group(req: EditRequest) -> tuple[str, str]:
    """Edits with the same subject after the same text have the same key at every layer (the
    model is causal): (subject, prompt text before "{}")."""
    return req.subject, req.prompt[:req.prompt.index("{}")]


def tail_tokens(tokenizer, req: EditRequest) -> int:
    """Tokens after the subject in the filled prompt plus the target: what each of the edit's
    rows feeds from δ's position on."""
    rest = req.prompt[req.prompt.index("{}") + 2:] + " " + req.target_new.strip()
    return len(tokenizer(rest, add_special_tokens=False)["input_ids"])


def compute_targets(handle, requests: list[EditRequest], layer: int, context_templates: list[str], hp,
                    *, batch_size: int | None = None, progress=None) -> TargetResult:
    """zᵢ for every request at block `layer` (Eq. 16); at most `batch_size` edits per padded batch
    (None: hp.batch_size; 0: all in one batch; 1: serial), grouped by `plan_batches`. Edits of one
    key group (`key_group`) share one δ — their keys are identical, so Eq. 14 can only give them
    one value — and stay in one batch. The batching changes the time, not z: rows never interact."""
    t0 = time.perf_counter()
    templates = ensure_bare(context_templates)
    n = len(requests)
    cap = hp.batch_size if batch_size is None else batch_size
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(key_group(r), []).append(i)
    members = list(groups.values())
    tails = [max(tail_tokens(handle.tokenizer, requests[i]) for i in m) for m in members]
    if cap <= 0:                                                    # all at once
        chunks = [[i for m in members for i in m]]
    else:
        step = STEP_COST * overhead_scale(handle.d_model, handle.d_mlp, torch.device(handle.device).type)
        plan = plan_batches(tails, [len(m) for m in members], len(templates), cap, step)
        chunks = [[i for g in batch for i in members[g]] for batch in plan]
    z, h = torch.zeros(n, handle.d_model), torch.zeros(n, handle.d_model)
    out = {k: [0.0] * n for k in ("loss", "nll", "kl")}
    out["steps"] = [0] * n
    tokens = forwards = 0
    for c, idx in enumerate(chunks):
        def step_progress(step, c=c):
            if progress is not None:
                progress(c * hp.v_steps + step, len(chunks) * hp.v_steps, "targets")
        part = _optimise(handle, [requests[i] for i in idx], layer, templates, hp, step_progress)
        z = z.to(part["z"].device)
        h = h.to(part["h"].device)
        z[idx], h[idx] = part["z"], part["h"]
        for k in out:
            for i, x in zip(idx, part[k]):
                out[k][i] = x
        tokens, forwards = tokens + part["tokens"], forwards + part["forwards"]
    return TargetResult(z=z, h=h, loss=out["loss"], nll=out["nll"], kl=out["kl"], steps=out["steps"],
                        seconds=time.perf_counter() - t0, tokens=tokens, forwards=forwards)


def _build_rows(tokenizer, requests, templates, group):
    """All rows of one batch: P rewriting rows per edit (prompt + target), one KL row per group."""
    rows, subj, edit, tgt = [], [], [], []          # tgt: (row, logit pos, token, weight)
    bare_row, kl_row = [], {}
    P = len(templates)
    for e, req in enumerate(requests):
        for j, c in enumerate(templates):
            text, c0, c1 = place(c, req.prompt, req.subject)
            enc = encode(tokenizer, text, c0, c1, req.target_new)
            if j == 0:
                bare_row.append(len(rows))
            w = 1.0 / (P * len(enc["tgt_ids"]))     # mean over tokens, then over prompts
            tgt += [(len(rows), p, t, w) for p, t in zip(enc["tgt_pos"], enc["tgt_ids"])]
            rows.append(enc["ids"]), subj.append(enc["subj"]), edit.append(e)
        if group[e] not in kl_row:
            text, c0, c1 = place(KL_TEMPLATE, "{}", req.subject)
            enc = encode(tokenizer, text, c0, c1)
            kl_row[group[e]] = len(rows)
            rows.append(enc["ids"]), subj.append(enc["subj"]), edit.append(e)
    return rows, subj, edit, tgt, bare_row, [kl_row[g] for g in range(len(kl_row))]


def _optimise(handle, requests, layer, templates, hp, step_progress) -> dict:
    """One padded batch of edits through v_steps of Adam (see module docstring); one δ per group."""
    dev = handle.device
    keys: dict[tuple, int] = {}
    group = [keys.setdefault(key_group(r), len(keys)) for r in requests]            # edit -> group
    rows, subj, edit, tgt, bare_row, kl_row = _build_rows(handle.tokenizer, requests, templates, group)
    ids_all, mask_all, pads = pad_left(rows, handle.tokenizer.pad_token_id, dev)
    subj_all = torch.tensor([s + p for s, p in zip(subj, pads)], device=dev)          # (R,)
    edit_group = torch.tensor(group, device=dev)                                    # (n,)
    row_group = edit_group[torch.tensor(edit, device=dev)]                          # (R,)
    row_edit = torch.tensor(edit, device=dev)
    t_row = torch.tensor([t[0] for t in tgt], device=dev)
    t_pos = torch.tensor([t[1] + pads[t[0]] for t in tgt], device=dev)
    t_ids = torch.tensor([t[2] for t in tgt], device=dev)
    t_w = torch.tensor([t[3] for t in tgt], device=dev, dtype=torch.float32)
    bare_row, kl_row = torch.tensor(bare_row, device=dev), torch.tensor(kl_row, device=dev)

    n, G, d = len(requests), len(keys), handle.d_model
    delta = torch.zeros(G, d, device=dev, requires_grad=True)                     # δ (G, d)
    m, v = torch.zeros(G, d, device=dev), torch.zeros(G, d, device=dev)           # Adam moments
    t_adam = torch.zeros(G, device=dev)
    active = torch.ones(G, dtype=torch.bool, device=dev)
    h0 = kl_init = h_cache = kv = None          # h_cache (R, T, d); kv: per block (keys, values) of step 0
    loss_f, nll_f, kl_f = torch.zeros(n), torch.zeros(n), torch.zeros(n)
    steps = torch.zeros(G, dtype=torch.long)
    n_tokens = n_forwards = 0
    with handle.lock:
        for it in range(hp.v_steps):
            act = active.nonzero().squeeze(1)                                       # active groups
            sel = active[row_group].nonzero().squeeze(1)                            # their rows
            remap = torch.full((len(rows),), -1, device=dev, dtype=torch.long)
            remap[sel] = torch.arange(len(sel), device=dev)
            ids, mask = ids_all[sel], mask_all[sel]
            cut = int((mask.sum(0) > 0).nonzero()[0])                               # drop all-pad columns
            ids, mask = ids[:, cut:], mask[:, cut:]
            n_tokens, n_forwards = n_tokens + int(mask.sum()), n_forwards + 1
            tsel = active[row_group[t_row]].nonzero().squeeze(1)
            tr, tp = remap[t_row[tsel]], t_pos[tsel] - cut
            kr = remap[kl_row[act]]
            pos = subj_all[sel] - cut
            d_rows = delta[row_group[sel]]                                          # (B, d)
            batch = torch.arange(len(sel), device=dev)
            if h_cache is None:                          # step 0: full forward, keep hᴸ of all rows
                assert cut == 0                          # all rows active: the widest has no padding
                cache0 = DynamicCache(config=handle.config)
                with handle.model.trace({"input_ids": ids, "attention_mask": mask},
                                        cache=cache0, use_cache=True) as tracer:
                    out = handle.layer(layer).output                                 # (B, T, d)
                    h_full = out.detach().clone().save()
                    new = out.clone()
                    new[batch, pos] = new[batch, pos] + d_rows.to(out.dtype)        # h += δ
                    handle.layer(layer).output = new
                    normed = final_norm(handle).output                              # (B, T, d)
                    h_tok = normed[tr, tp].save()                                   # (N_tok, d)
                    h_kl = normed[kr, pos[kr]].save()                               # (n_act, d)
                    tracer.stop()                                # the head runs on these rows only
                h_cache = h_full
                kv = cache_kv(cache0, ids.shape[1])      # None (sliding window …): feed every token
                kv = None if kv is None else [(k.detach(), v.detach()) for k, v in kv]
            else:                                        # blocks ≤ L and tokens < c do not depend on δ
                c = int(pos.min()) if kv is not None else 0                         # first token fed
                kwargs = {}
                if c > 0:   # tokens cut … cut+c−1 of every row: keys/values of step 0 (δ = 0 there)
                    kwargs = {"use_cache": True, "position_ids": position_ids_for(mask)[:, c:],
                              "cache": DynamicCache(config=handle.config, ddp_cache_data=[
                                  (k[sel][:, :, cut:cut + c], v[sel][:, :, cut:cut + c]) for k, v in kv])}
                start = h_cache[sel][:, cut + c:].clone()                           # (B, T−c, d)
                start[batch, pos - c] = start[batch, pos - c] + d_rows.to(start.dtype)
                with handle.model.trace({"input_ids": ids[:, c:], "attention_mask": mask},
                                        **kwargs) as tracer:
                    for j in range(layer + 1):
                        handle.layer(j).skip(start)
                    normed = final_norm(handle).output                              # (B, T−c, d)
                    h_tok = normed[tr, tp - c].save()
                    h_kl = normed[kr, pos[kr] - c].save()
                    tracer.stop()
                n_tokens -= int(mask[:, :c].sum())               # count only the tokens fed
            tok_lp = head(handle)(h_tok).float().log_softmax(-1).gather(
                1, t_ids[tsel].unsqueeze(1)).squeeze(1)                             # (N_tok,)
            kl_lp = head(handle)(h_kl).float().log_softmax(-1)                      # (n_act, V)
            if h0 is None:                                                           # step 0: all active
                h_edit = h_cache[bare_row, subj_all[bare_row]].float()              # (n, d) hᴸ per edit
                h0 = torch.zeros(G, d, device=dev).index_copy(0, edit_group, h_edit)   # (G, d)
                kl_init = kl_lp.detach()                                            # log p_0
            # loss per active group: Σ its edits' NLL + KL + weight decay (= the edit's loss alone)
            local = torch.full((G,), -1, device=dev, dtype=torch.long)
            local[act] = torch.arange(len(act), device=dev)
            e_act = active[edit_group].nonzero().squeeze(1)                         # active edits
            nll_e = torch.zeros(n, device=dev).index_add(0, row_edit[t_row[tsel]], -tok_lp * t_w[tsel])
            nll = torch.zeros(len(act), device=dev).index_add(0, local[edit_group[e_act]], nll_e[e_act])
            kl = hp.kl_factor * (kl_lp.exp() * (kl_lp - kl_init[act])).sum(-1)
            wd = hp.v_weight_decay * delta[act].norm(dim=1) / h0[act].norm(dim=1) ** 2
            loss = nll + kl + wd
            per_edit = (nll_e[e_act] + (kl + wd)[local[edit_group[e_act]]]).detach()
            e_cpu = e_act.cpu()
            loss_f[e_cpu], nll_f[e_cpu] = per_edit.cpu(), nll_e[e_act].detach().cpu()
            kl_f[e_cpu] = kl.detach()[local[edit_group[e_act]]].cpu()
            worst = torch.full((len(act),), -float("inf"), device=dev).scatter_reduce(
                0, local[edit_group[e_act]], per_edit, reduce="amax")
            done = worst < hp.v_loss_tol                                            # every edit below tol
            step_progress(it + 1)
            if it == hp.v_steps - 1 or bool(done.all()):
                break
            loss[~done].sum().backward()                                             # rows independent
            upd = act[~done]
            _adam_step(delta, delta.grad, m, v, t_adam, upd, hp.v_lr)
            delta.grad = None
            _clamp(delta, h0, upd, hp.clamp_norm_factor)
            steps[upd.cpu()] += 1
            active[act[done]] = False
    z = (h0 + delta.detach())[edit_group].float()
    return {"z": z, "h": h0[edit_group].float(), "loss": loss_f.tolist(), "nll": nll_f.tolist(),
            "kl": kl_f.tolist(), "steps": steps[edit_group.cpu()].tolist(), "tokens": n_tokens,
            "forwards": n_forwards}


@torch.no_grad()
def _adam_step(param, grad, m, v, t, rows, lr) -> None:
    """torch.optim.Adam's update (no weight decay), applied to `rows` only, each with its own t."""
    b1, b2 = ADAM_BETAS
    g = grad[rows]
    t[rows] += 1
    m[rows] = b1 * m[rows] + (1 - b1) * g
    v[rows] = b2 * v[rows] + (1 - b2) * g * g
    bc1 = 1 - b1 ** t[rows]
    bc2 = 1 - b2 ** t[rows]
    denom = v[rows].sqrt() / bc2.sqrt().unsqueeze(1) + ADAM_EPS
    param[rows] -= (lr / bc1).unsqueeze(1) * m[rows] / denom


@torch.no_grad()
def _clamp(delta, h0, rows, factor) -> None:
    """‖δᵢ‖ ≤ factor·‖hᵢᴸ‖ (projection onto the ball)."""
    max_norm = factor * h0[rows].norm(dim=1)
    norm = delta[rows].norm(dim=1)
    scale = torch.where(norm > max_norm, max_norm / norm.clamp_min(1e-12), torch.ones_like(norm))
    delta[rows] *= scale.unsqueeze(1)
