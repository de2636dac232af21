"""What if the edited MLPs had more key dimensions? Widen them without changing the model.

MEMIT keeps an edit in an MLP's W_out only as far as the edit's key k (the W_out input, d_mlp
wide) is distinct from other keys in the metric C⁻¹ of Eq. 14 (`core.capacity`): when n edits
approach d_mlp, each stores less of its residual and leaks more into other subjects.
`widen_mlps` appends `extra` hidden units to the MLPs of chosen layers:

    W_in  (d_mlp, d)  →  [W_in ; G]     G (extra, d) ~ N(0, s²), s = mean std of W_in's rows
    b_in  (d_mlp,)    →  [b_in ; g]     g ~ N(mean b_in, std b_in)
    W_out (d, d_mlp)  →  [W_out, 0]     zero columns: the new units add nothing to the output

(shown in the Linear layout; Conv1D stores the transposes; gated MLPs get G for both the gate
and the up projection). The model computes exactly what it did, but W_out has d_mlp + extra
key dimensions for MEMIT to write into. An experiment about the edit method's capacity — how
many edits would this layer hold with a wider key space? — not a model one would ship (random
units, and every forward pays for them); a model trained wide is the real thing
(`workbench demo train --n-inner`).
"""

from __future__ import annotations

import torch

from core.arch import get_path
from core.errors import BadInputError


def _append_units(module: torch.nn.Module, new: torch.Tensor, axis: int) -> None:
    """Concatenate `new` to module.weight along its hidden-unit axis; keep the module's shape
    attributes in step (Conv1D: `nf` = output width; Linear: in/out features)."""
    w = torch.cat([module.weight, new.to(module.weight)], dim=axis)
    module.weight = torch.nn.Parameter(w, requires_grad=False)
    if isinstance(module, torch.nn.Linear):
        module.out_features, module.in_features = w.shape
    elif hasattr(module, "nf"):
        module.nf = w.shape[1]


def widen_mlps(handle, layers, extra: int, seed: int = 0) -> dict[int, int]:
    """Append `extra` random hidden units with zero output weights to the MLPs of `layers`, in
    place (the model's outputs are unchanged up to float rounding). Returns {layer: new d_mlp}.

    The handle's `base_hash` is recomputed, so covariance caches of the unwidened model are not
    used for it. Everything is checked before any weight changes.
    """
    if int(extra) != extra or extra < 1:
        raise BadInputError(f"must be a whole number ≥ 1, got {extra}", field="extra_keys")
    if not handle.spec.mlp_in:
        raise BadInputError(f"widening is not described for the {handle.spec.family} family", field="extra_keys")
    from core.model import weights_hash

    layers = handle.check_layers(layers)
    in_axis, out_axis = (1, 0) if handle.spec.layout == "conv1d" else (0, 1)   # hidden-unit axes as stored
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    with handle.lock, torch.no_grad():
        for i in layers:
            block = handle.hf_layer(i)
            for path in handle.spec.mlp_in:
                mod = get_path(block, path)
                scale = mod.weight.float().std(dim=1 - in_axis).mean()        # mean per-unit std
                G = torch.randn(extra, mod.weight.shape[1 - in_axis], generator=g) * scale   # (extra, d)
                _append_units(mod, G if in_axis == 0 else G.T, in_axis)
                if getattr(mod, "bias", None) is not None:
                    b = mod.bias.float()
                    new_b = torch.randn(extra, generator=g) * b.std() + b.mean()
                    mod.bias = torch.nn.Parameter(torch.cat([mod.bias, new_b.to(mod.bias)]), requires_grad=False)
            down = handle.mlp_out_module(i)
            zeros = down.weight.new_zeros(extra, down.weight.shape[1 - out_axis])      # (extra, d)
            _append_units(down, zeros if out_axis == 0 else zeros.T, out_axis)
            out[i] = handle.d_mlp_at(i)
        handle.base_hash = weights_hash(handle.hf)
    return out
