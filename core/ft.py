"""FT-W: fine-tuning one MLP layer with weight decay (MEMIT paper Appendix B.1), the naive baseline.

Only W_out of one layer is trained, on all requests together: the loss is the mean over requests
of the per-token mean NLL of " " + o_new after the edit prompt (teacher forced), minimised with
Adam (weight decay as Adam's L2 term, as the reference `ft_main` does) for at most `steps`
epochs over mini-batches, stopping early once the epoch's mean loss is below `loss_tol`.
Paper values for GPT-J: layer 21, lr 5·10⁻⁴, weight decay 5·10⁻⁴, 25 steps, stop at 10⁻².
The demo model (8×128, trained from scratch) barely moves at lr 5·10⁻⁴ (100 edits, layer 2:
ES 0 %, as unedited); its preset uses lr 2·10⁻² (ES 73 %, NS 88 %), which reproduces the paper's
picture of FT-W: efficacy bought with specificity.
`execute_ft` returns ΔW = W_trained − W and leaves the model exactly as it found it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import pandas as pd
import torch

from core.errors import BadInputError
from core.hparams import MemitHparams, is_demo, preset_for
from core.memit import EditResult
from core.model import position_ids_for
from core.requests import EditRequest, validate_requests
from core.targets import encode, pad_left


DEMO_FT_LR = 2e-2


@dataclass
class FtHparams:
    """layer: the W_out trained; lr / weight_decay: Adam's; steps: max epochs; loss_tol: early stop;
    batch_size: requests per optimiser step."""

    layer: int
    lr: float = 5e-4
    weight_decay: float = 5e-4
    steps: int = 25
    loss_tol: float = 1e-2
    batch_size: int = 64

    def __post_init__(self):
        for name, ok in [("lr", math.isfinite(self.lr) and self.lr > 0),
                         ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0),
                         ("steps", self.steps >= 1), ("loss_tol", self.loss_tol >= 0),
                         ("batch_size", self.batch_size >= 1)]:
            if not ok:
                raise BadInputError(f"invalid value {getattr(self, name)!r}", field=name)

    def to_dict(self) -> dict:
        return asdict(self)


def ft_hparams(handle, hparams=None) -> FtHparams:
    """FtHparams as given; from MEMIT hparams the last layer of R; else the preset's last layer
    (the paper's optimiser settings, except lr 2·10⁻² on the demo model)."""
    if isinstance(hparams, FtHparams):
        return hparams
    if isinstance(hparams, dict):
        return FtHparams(**hparams)
    hp = hparams if isinstance(hparams, MemitHparams) else preset_for(handle)
    return FtHparams(layer=max(hp.layers), **({"lr": DEMO_FT_LR} if is_demo(handle) else {}))


def _batch(handle, reqs: list[EditRequest]):
    """Left-padded prompt + " " + target rows and the (row, position, token, weight) of the targets."""
    encs = [encode(handle.tokenizer, r.filled, None, None, r.target_new) for r in reqs]
    ids, mask, pads = pad_left([e["ids"] for e in encs], handle.tokenizer.pad_token_id, handle.device)
    rows, pos, tok, w = [], [], [], []
    for r, (e, p) in enumerate(zip(encs, pads)):
        n = len(e["tgt_ids"])
        rows += [r] * n
        pos += [q + p for q in e["tgt_pos"]]
        tok += e["tgt_ids"]
        w += [1.0 / n] * n                                       # mean over the target's tokens
    as_t = lambda x, dt=torch.long: torch.tensor(x, device=handle.device, dtype=dt)  # noqa: E731
    return ids, mask, as_t(rows), as_t(pos), as_t(tok), as_t(w, torch.float32)


def target_nll(handle, reqs: list[EditRequest]) -> torch.Tensor:
    """Per request: mean NLL of " " + target_new after the prompt (differentiable through W)."""
    ids, mask, rows, pos, tok, w = _batch(handle, reqs)
    logits = handle.hf(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask)).logits
    lp = logits[rows, pos].float().log_softmax(-1).gather(1, tok.unsqueeze(1)).squeeze(1)   # (N_tok,)
    return torch.zeros(len(reqs), device=handle.device).index_add(0, rows, -lp * w)          # (n,)


def execute_ft(handle, requests: list[EditRequest], hparams=None, *, progress=None,
               cov_cache_dir=None) -> EditResult:
    """FT-W on `requests` (see module docstring). `hparams`: FtHparams, its dict, or MEMIT
    hparams (then the last layer of R is trained). `cov_cache_dir` is unused (no statistics)."""
    t_start = time.perf_counter()
    hp = ft_hparams(handle, hparams)
    layer = handle.check_layers([hp.layer])[0]
    report = validate_requests(list(requests), handle.tokenizer, handle.max_length)
    report.raise_if_bad()
    reqs = report.requests
    weight = handle.mlp_out_weight(layer)
    original = weight.detach().clone()
    before, after, history = [], [], []
    try:
        with handle.lock:
            with torch.no_grad():
                before = target_nll(handle, reqs).cpu().tolist()
            weight.requires_grad_(True)
            opt = torch.optim.Adam([weight], lr=hp.lr, weight_decay=hp.weight_decay)
            for step in range(hp.steps):
                total = 0.0
                for start in range(0, len(reqs), hp.batch_size):
                    chunk = reqs[start:start + hp.batch_size]
                    opt.zero_grad()
                    loss = target_nll(handle, chunk).mean()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(chunk)
                history.append(total / len(reqs))
                if progress is not None:
                    progress(step + 1, hp.steps, "fine-tune")
                if history[-1] < hp.loss_tol:                # early stopping
                    break
            weight.requires_grad_(False)
            weight.grad = None
            with torch.no_grad():
                after = target_nll(handle, reqs).cpu().tolist()
                delta = (weight.detach().float() - original.float()).cpu()
    finally:
        with handle.lock, torch.no_grad():
            weight.requires_grad_(False)
            weight.grad = None
            weight.copy_(original)
    norm = float(delta.norm())
    per_edit = pd.DataFrame({"case_id": [r.case_id for r in reqs], "subject": [r.subject for r in reqs],
                             "prompt": [r.prompt for r in reqs], "target_new": [r.target_new for r in reqs],
                             "nll_before": before, "nll": after, "steps": len(history)})
    total_s = time.perf_counter() - t_start
    return EditResult(method="ft", layers=[layer], deltas={layer: delta}, delta_norms={layer: norm},
                      relative_norms={layer: norm / max(float(original.float().norm()), 1e-12)},
                      per_edit=per_edit, timings={"train": total_s, "total": total_s},
                      hparams={**hp.to_dict(), "loss_history": history}, requests=reqs,
                      notes=list(report.warnings))
