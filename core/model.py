"""The model handle: one HuggingFace causal LM, wrapped by nnsight, with its architecture spec.

Every feature of the workbench goes through a `ModelHandle`:

    handle = load_model("demo")                    # the embedded demo model in assets/
    handle = load_model("gpt2-xl", dtype="float16") # hub id or local folder, same code path
    with handle.lock, handle.model.trace(prompt):  # every trace and weight edit holds the lock
        h = handle.layers[3].output.save()

nnsight is not thread-safe (two threads tracing one model give wrong results), and Streamlit
serves every browser session from its own thread on one cached model: the handle carries a
re-entrant lock, and core functions hold it for each trace and each in-place weight change.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.arch import ArchSpec, get_path, spec_for
from core.errors import BadInputError, ModelLoadError

DEMO_MODEL_NAME = "demo"


def assets_dir() -> Path:
    """The project's `assets/` folder (shipped demo model, world files)."""
    return Path(__file__).resolve().parent.parent / "assets"


def demo_model_dir() -> Path:
    return assets_dir() / "demo-model"


def resolve_model_path(name: str) -> str:
    """'demo' → the shipped demo model folder; anything else is returned as given."""
    return str(demo_model_dir()) if name == DEMO_MODEL_NAME else name


@dataclass
class ModelHandle:
    """An nnsight-wrapped causal LM plus the facts about it every feature needs.

    model:     `nnsight.modeling.transformers.TransformersModel`; trace with `model.trace(...)`.
    tokenizer: the (fast) tokenizer; nnsight sets `padding_side="left"` and a pad token.
    spec:      module paths for this family (see `core.arch`).
    name:      what the user asked for ("demo", a hub id or a folder).
    base_hash: hash of the weights as loaded, before any edit (identifies the base model for
               covariance caches and patches).
    lock:      held for every trace and weight edit.
    key_room:  the key-room manifest applied at load (`core.widen.read_key_room`), or None.
    """

    model: object
    tokenizer: object
    spec: ArchSpec
    name: str
    base_hash: str
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    key_room: dict | None = None     # the folder's key_room.json as applied at load (`core.widen`)

    # ---- the plain HF module and its modules -------------------------------------------------
    @property
    def hf(self) -> torch.nn.Module:
        """The underlying HF model (`PreTrainedModel`); use for plain forwards and weights."""
        return self.model._module

    @property
    def config(self):
        return self.hf.config

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def n_layers(self) -> int:
        return int(getattr(self.config, self.spec.n_layer_attr))

    @property
    def d_model(self) -> int:
        return int(getattr(self.config, self.spec.d_model_attr))

    @property
    def d_mlp(self) -> int:
        """Width of the MLP hidden layer: the key dimension of W_out (of layer 0)."""
        return self.d_mlp_at(0)

    def d_mlp_at(self, i: int) -> int:
        """Key dimension of layer i's W_out (differs from `d_mlp` only after `core.widen`)."""
        w = self.mlp_out_weight(i)
        return int(w.shape[0] if self.spec.layout == "conv1d" else w.shape[1])

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.hf.parameters())

    @property
    def max_length(self) -> int:
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            v = getattr(self.config, attr, None)
            if isinstance(v, int) and v > 0:
                return v
        return 2048

    def hf_layer(self, i: int) -> torch.nn.Module:
        return get_path(self.hf, self.spec.layers)[i]

    def layer(self, i: int):
        """The nnsight envoy of decoder block i (use inside `model.trace`)."""
        return get_path(self.model, self.spec.layers)[i]

    def envoy(self, i: int, component: str):
        """Envoy of a component of block i: component is a spec field ('mlp', 'mlp_out', 'attn', ...)."""
        return get_path(self.layer(i), getattr(self.spec, component))

    @property
    def embed(self):
        return get_path(self.model, self.spec.embed)

    @property
    def lm_head(self):
        return get_path(self.model, self.spec.lm_head)

    def mlp_out_module(self, i: int) -> torch.nn.Module:
        return get_path(self.hf_layer(i), self.spec.mlp_out)

    def mlp_out_weight(self, i: int) -> torch.nn.Parameter:
        """W_out of layer i as stored: (d_mlp, d_model) for Conv1D, (d_model, d_mlp) for Linear."""
        return self.mlp_out_module(i).weight

    def check_layers(self, layers) -> list[int]:
        layers = sorted({int(x) for x in layers})
        if not layers:
            raise BadInputError("at least one layer is needed", field="layers")
        bad = [x for x in layers if x < 0 or x >= self.n_layers]
        if bad:
            raise BadInputError(
                f"{bad} out of range: this model has layers 0..{self.n_layers - 1}", field="layers"
            )
        return layers

    # ---- tokenisation -----------------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> dict:
        """Left-padded batch on the model's device: {'input_ids', 'attention_mask'}."""
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True)
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def info(self) -> dict:
        """A plain summary for `workbench info` and the app's model card."""
        return {
            "name": self.name,
            "family": self.spec.family,
            "model_type": self.config.model_type,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "d_mlp": self.d_mlp,
            "vocab_size": int(self.config.vocab_size),
            "n_params": self.n_params,
            "max_length": self.max_length,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "mlp_out_path": f"{self.spec.layers}.{{i}}.{self.spec.mlp_out}",
            "weight_layout": self.spec.layout,
            "base_hash": self.base_hash,
            "key_room": self.key_room,
        }


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: pass these to a *plain* HF forward on a left-padded batch.

    nnsight's TransformersModel already does this; a plain `hf(**enc)` does not (transformers 5
    GPT-2 counts pad tokens as positions), so reference computations in tests need it.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# ---- construction ---------------------------------------------------------------------------

def weights_hash(model: torch.nn.Module) -> str:
    """A short content hash of all parameters and buffers (blake2b over raw bytes, in order)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def wrap_model(hf_model, tokenizer, name: str = "in-memory") -> ModelHandle:
    """Wrap an already-built HF causal LM (e.g. a tiny test model) in a handle."""
    from nnsight.modeling.transformers import TransformersModel

    spec = spec_for(hf_model.config.model_type)
    hf_model.eval()
    hf_model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    nn_model = TransformersModel(hf_model, tokenizer=tokenizer)
    return ModelHandle(model=nn_model, tokenizer=tokenizer, spec=spec, name=name,
                       base_hash=weights_hash(hf_model))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> str:
    """`device` if this torch can use it ('cpu', 'cuda', 'cuda:1', 'mps'); else BadInputError('device')."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise BadInputError(f"'{device}' is not a device (cpu, cuda, cuda:N or mps)", field="device") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInputError(f"'{device}': CUDA is not available in this torch build or machine; use cpu",
                                field="device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadInputError(f"'{device}': there are only {torch.cuda.device_count()} CUDA device(s)",
                                field="device")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise BadInputError(f"'{device}': MPS is not available on this machine; use cpu", field="device")
    elif dev.type != "cpu":
        raise BadInputError(f"'{device}' is not supported (cpu, cuda, cuda:N or mps)", field="device")
    return device


def _looks_like_path(name: str) -> bool:
    """'./m', '../m', '/abs/m', '~/m', 'm/' — a folder, not a hub id ('org/name')."""
    return name.startswith((".", "/", "~", "\\")) or name.endswith(("/", "\\")) or "\\" in name


def _pick_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # fp32 on CPU (half precision is slow and lossy there); bf16 on GPU saves half the memory.
        return torch.float32 if device == "cpu" else torch.bfloat16
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[dtype]
    except KeyError:
        raise BadInputError(f"unknown dtype '{dtype}' (float32, float16, bfloat16)", field="dtype") from None


def load_model(
    name: str = DEMO_MODEL_NAME,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    key_room: bool = True,
) -> ModelHandle:
    """Load a causal LM by hub id or local folder ('demo' = the shipped demo model).

    A local folder with a `key_room.json` gets the extra MLP units it describes
    (`core.widen.widen_mlps`; the model computes the same) unless `key_room` is False.
    Raises ModelLoadError when the model is neither a local folder nor reachable on the hub, or
    needs `trust_remote_code` (off unless asked); UnsupportedArchitectureError when its
    `model_type` is not in the architecture table. Safetensors weights are preferred.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name)
    local = Path(path).expanduser().is_dir()
    if name == DEMO_MODEL_NAME and not local:
        raise ModelLoadError(
            f"the demo model is missing at {path}; rebuild it with `workbench demo train`"
        )
    if not local and _looks_like_path(path):
        what = "is a file, not a model folder" if Path(path).expanduser().exists() else "no such folder"
        raise ModelLoadError(f"model '{name}': {what}")
    path = str(Path(path).expanduser()) if local else path
    device = check_device(device or default_device())
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelLoadError(
                f"model '{name}' runs custom code from its repository; load it only if you trust "
                "it, with trust_remote_code=True (CLI: --trust-remote-code)"
            ) from None
        raise ModelLoadError(f"cannot read the config of '{name}': {e}") from None
    except OSError as e:
        where = "is not a local folder" if not local else "has no usable config.json"
        raise ModelLoadError(
            f"model '{name}' {where} and could not be fetched from the HuggingFace hub "
            f"(offline or unknown id): {str(e).splitlines()[0]}"
        ) from None
    spec_for(config.model_type)  # fail fast on unsupported families, before loading weights
    room = None
    if local and key_room:
        from core.widen import read_key_room

        room = read_key_room(path)   # a bad key_room.json fails here too, before the weights load
    torch_dtype = _pick_dtype(dtype, device)
    has_safetensors = local and any(Path(path).glob("*.safetensors"))
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, trust_remote_code=trust_remote_code,
            use_safetensors=True if has_safetensors else None,
        )
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelLoadError(f"cannot load weights or tokenizer of '{name}': {str(e).splitlines()[0]}") from None
    hf_model.to(device)
    handle = wrap_model(hf_model, tokenizer, name=name)
    if room is not None:
        from core.widen import apply_key_room

        apply_key_room(handle, room)
    return handle
