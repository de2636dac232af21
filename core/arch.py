"""Architecture table: where each model family keeps the modules MEMIT and causal tracing need.

Families are looked up by `config.model_type`, never by substring checks on names. Each entry
is plain data (dotted module paths relative to the HF model, or to one decoder layer), so adding
a family is adding a row. Paths verified on transformers 5 random-init models (see tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.errors import UnsupportedArchitectureError

WeightLayout = Literal["conv1d", "linear"]


@dataclass(frozen=True)
class ArchSpec:
    """Module paths for one model family.

    layers:     dotted path to the ModuleList of decoder blocks (from the model root).
    embed:      token embedding module (from the root).
    mlp:        the MLP of one block (relative to a block).
    mlp_out:    the MLP output projection W_out, the matrix MEMIT edits (relative to a block).
    attn:       the attention module of one block (relative to a block).
    attn_out:   attention output projection (relative to a block).
    final_norm: final layer norm before the head (from the root).
    lm_head:    the unembedding (from the root).
    layout:     "conv1d" stores W as (in, out) with y = x @ W + b (GPT-2);
                "linear" stores W as (out, in) with y = x @ W.T + b.
    n_layer_attr / d_model_attr / d_mlp_attr: config attribute names for sizes.
    mlp_in:     the MLP input projections whose outputs make the keys (relative to a block; two
                for gated MLPs: the key is act(gate x) · up x).
    """

    family: str
    layers: str
    embed: str
    mlp: str
    mlp_out: str
    attn: str
    attn_out: str
    final_norm: str
    lm_head: str
    layout: WeightLayout
    n_layer_attr: str
    d_model_attr: str
    d_mlp_attr: str | None
    mlp_in: tuple[str, ...] = ()


_LLAMA_LIKE = dict(
    layers="model.layers", embed="model.embed_tokens", mlp="mlp", mlp_out="mlp.down_proj",
    attn="self_attn", attn_out="self_attn.o_proj", final_norm="model.norm", lm_head="lm_head",
    layout="linear", n_layer_attr="num_hidden_layers", d_model_attr="hidden_size",
    d_mlp_attr="intermediate_size", mlp_in=("mlp.gate_proj", "mlp.up_proj"),
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "gpt2": ArchSpec(
        family="gpt2", layers="transformer.h", embed="transformer.wte", mlp="mlp",
        mlp_out="mlp.c_proj", attn="attn", attn_out="attn.c_proj", final_norm="transformer.ln_f",
        lm_head="lm_head", layout="conv1d", n_layer_attr="n_layer", d_model_attr="n_embd",
        d_mlp_attr="n_inner", mlp_in=("mlp.c_fc",),
    ),
    "gptj": ArchSpec(
        family="gptj", layers="transformer.h", embed="transformer.wte", mlp="mlp",
        mlp_out="mlp.fc_out", attn="attn", attn_out="attn.out_proj", final_norm="transformer.ln_f",
        lm_head="lm_head", layout="linear", n_layer_attr="n_layer", d_model_attr="n_embd",
        d_mlp_attr="n_inner", mlp_in=("mlp.fc_in",),
    ),
    "gpt_neox": ArchSpec(
        family="gpt_neox", layers="gpt_neox.layers", embed="gpt_neox.embed_in", mlp="mlp",
        mlp_out="mlp.dense_4h_to_h", attn="attention", attn_out="attention.dense",
        final_norm="gpt_neox.final_layer_norm", lm_head="lm_head", layout="linear",
        n_layer_attr="num_hidden_layers", d_model_attr="hidden_size",
        d_mlp_attr="intermediate_size", mlp_in=("mlp.dense_h_to_4h",),
    ),
    "llama": ArchSpec(family="llama", **_LLAMA_LIKE),
    "mistral": ArchSpec(family="mistral", **_LLAMA_LIKE),
    "qwen2": ArchSpec(family="qwen2", **_LLAMA_LIKE),
}


def supported_model_types() -> list[str]:
    return sorted(ARCHITECTURES)


def spec_for(model_type: str) -> ArchSpec:
    """The spec for a `config.model_type`; a clear error listing the supported ones otherwise."""
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"unsupported architecture '{model_type}'; supported model types: "
            + ", ".join(supported_model_types())
        ) from None


def get_path(root, dotted: str):
    """Follow a dotted attribute path (`"transformer.h"`, `"mlp.c_proj"`) from `root`.

    Works on plain torch modules and on nnsight envoys alike.
    """
    obj = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
