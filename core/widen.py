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
key dimensions for MEMIT to write into — how many edits would this layer hold with a wider key
space? (`--extra-keys N` on `capacity` / `eval`). Every forward pays for the units, so it is worth
it only in the layers MEMIT edits; a model trained wide is the cleaner thing
(`workbench demo train --n-inner`).

A model folder may carry the widening with it: `key_room.json` (`{"layers": [0], "extra": 6144,
"seed": 0}`) is read by `core.model.load_model`, which applies it with `apply_key_room` (the
random units are drawn from the seed, so every load gives the same weights; the demo model ships
one). A model whose MLPs
then differ in width saves as a standard folder through `save_uniform`: the narrower layers get
all-zero units (input weights, biases and output weights 0, so they add exactly nothing) and the
config one width, the widest.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

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


def _grow_mlp(block: torch.nn.Module, spec, extra: int, g: torch.Generator | None) -> None:
    """Append `extra` hidden units to the MLP of `block`, with zero output weights. Input weights
    and biases: random (W_in's mean per-unit std, b_in's mean and std) drawn from `g`, or zero
    when `g` is None (units that add exactly nothing, to pad a layer)."""
    in_axis, out_axis = (1, 0) if spec.layout == "conv1d" else (0, 1)   # hidden-unit axes as stored
    for path in spec.mlp_in:
        mod = get_path(block, path)
        if g is None:
            G = mod.weight.new_zeros(extra, mod.weight.shape[1 - in_axis])
        else:
            # drawn on the CPU (`g` is a CPU generator; same units on every device), statistics
            # as Python numbers so that a model on a GPU mixes no devices
            scale = float(mod.weight.float().std(dim=1 - in_axis).mean())     # mean per-unit std
            G = torch.randn(extra, mod.weight.shape[1 - in_axis], generator=g) * scale   # (extra, d)
        _append_units(mod, G if in_axis == 0 else G.T, in_axis)
        if getattr(mod, "bias", None) is not None:
            b = mod.bias.float()
            new_b = mod.bias.new_zeros(extra) if g is None else \
                torch.randn(extra, generator=g) * float(b.std()) + float(b.mean())
            mod.bias = torch.nn.Parameter(torch.cat([mod.bias, new_b.to(mod.bias)]), requires_grad=False)
    down = get_path(block, spec.mlp_out)
    zeros = down.weight.new_zeros(extra, down.weight.shape[1 - out_axis])      # (extra, d)
    _append_units(down, zeros if out_axis == 0 else zeros.T, out_axis)


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
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    with handle.lock, torch.no_grad():
        for i in layers:
            _grow_mlp(handle.hf_layer(i), handle.spec, extra, g)
            out[i] = handle.d_mlp_at(i)
        handle.base_hash = weights_hash(handle.hf)
    return out


KEY_ROOM_FILE = "key_room.json"


def read_key_room(folder) -> dict | None:
    """The key-room manifest of a model folder, {"layers": [int], "extra": int, "seed": int}, or
    None when the folder has none. A manifest that cannot be read is an error, never ignored."""
    path = Path(folder) / KEY_ROOM_FILE
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        room = {"layers": [int(x) for x in d["layers"]], "extra": d["extra"], "seed": int(d.get("seed", 0))}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise BadInputError(f"{path} is not a key-room manifest ({type(e).__name__}: {e}); expected "
                            '{"layers": [0], "extra": 6144, "seed": 0}', field="key_room") from None
    if not room["layers"] or not isinstance(room["extra"], int) or room["extra"] < 1:
        raise BadInputError(f"{path}: needs at least one layer and a whole number extra ≥ 1", field="key_room")
    return room


def apply_key_room(handle, room: dict) -> None:
    """Widen the handle's MLPs as the manifest `room` (`read_key_room`) says; record it on the
    handle (`handle.key_room`, shown by `info()`)."""
    widen_mlps(handle, room["layers"], room["extra"], seed=room["seed"])
    handle.key_room = {k: room[k] for k in ("layers", "extra", "seed")}


def save_uniform(handle, out_dir) -> None:
    """`save_pretrained` the model; when its MLPs differ in width (`widen_mlps` on some layers),
    save a copy whose narrower MLPs are padded with all-zero units to the widest and whose config
    says that width — a standard folder that plain transformers loads, computing the same."""
    widths = [handle.d_mlp_at(i) for i in range(handle.n_layers)]
    target = max(widths)
    configured = getattr(handle.config, handle.spec.d_mlp_attr, None) or 4 * handle.d_model   # GPT-2/J: None = 4d
    if min(widths) == target == configured:
        handle.hf.save_pretrained(out_dir)
        return
    model = copy.deepcopy(handle.hf)
    layers = get_path(model, handle.spec.layers)
    with torch.no_grad():
        for i, w in enumerate(widths):
            if w < target:
                _grow_mlp(layers[i], handle.spec, target - w, None)
    setattr(model.config, handle.spec.d_mlp_attr, target)
    model.save_pretrained(out_dir)
