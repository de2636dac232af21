"""Key statistics C = E[kkᵀ] for MEMIT (paper Eq. 15), collected through nnsight and cached.

A key k is the input of a layer's MLP out-projection W_out (the post-nonlinearity MLP
activations, width d_mlp) at one token. C is the uncentred second moment over every non-pad token
of a text corpus; MEMIT uses λ·C as the stand-in for the keys K₀K₀ᵀ the layer already stores.

    stats = layer_covariances(handle, [3, 4, 5], corpus="demo", n_samples=10_000)
    C = stats[3].C                                   # (d_mlp, d_mlp), CPU

The corpus is read with `datasets`: "demo" (the demo world's corpus.txt), a local .txt (one
record per non-empty line) or .jsonl/.json (a "text" field), or a hub dataset name such as
"wikitext" — which needs the network; when it cannot be loaded the demo corpus is used and the
result's `note` says so. Results are cached under `core.paths.stats_dir()` as safetensors whose
metadata carry a JSON header (model, weights hash, layer, corpus, samples, dtype); a file whose
header does not match the request, or that cannot be read, is recomputed, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from core.errors import BadInputError

CACHE_FORMAT = "memit-workbench-cov/1"
GRAM_BLOCK = 1024     # rows of Σ kkᵀ per product in add_gram (fastest of 256-2,048 on a CPU core)
HUB_CONFIGS = {"wikitext": "wikitext-103-raw-v1"}


@dataclass
class Corpus:
    texts: list[str]      # non-empty records, at most n_samples
    label: str            # identifies the text (name + content hash for files)
    note: str | None = None


@dataclass
class CovStats:
    """C = E[kkᵀ] of one layer's W_out inputs. C is on CPU in the accumulation dtype."""

    layer: int
    C: torch.Tensor       # (d_mlp, d_mlp)
    n_tokens: int
    n_records: int
    corpus: str
    from_cache: bool
    path: str | None = None
    note: str | None = None


# ---- corpus -------------------------------------------------------------------------------------

def demo_corpus_path() -> Path:
    from core.model import assets_dir

    return assets_dir() / "world" / "corpus.txt"


def _file_label(path: Path) -> str:
    digest = hashlib.blake2b(path.read_bytes(), digest_size=8).hexdigest()
    return f"{path.name}:{digest}"


def _quiet_load(*args, **kwargs):
    """`datasets.load_dataset` without its progress bars (restored afterwards)."""
    from datasets import load_dataset
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        return load_dataset(*args, **kwargs)
    finally:
        if not was_disabled:
            enable_progress_bars()


def _load_file(path: Path, n_samples: int) -> list[str]:
    if path.suffix.lower() in (".jsonl", ".json"):
        ds = _quiet_load("json", data_files=str(path), split="train")
        if "text" not in ds.column_names:
            raise BadInputError(f"{path.name} has no 'text' field (fields: {ds.column_names})", field="corpus")
    else:
        ds = _quiet_load("text", data_files=str(path), split="train")
    texts = []
    for t in ds["text"]:
        if isinstance(t, str) and t.strip():
            texts.append(t.strip())
            if len(texts) >= n_samples:
                break
    if not texts:
        raise BadInputError(f"{path} contains no text", field="corpus")
    return texts


def load_corpus(corpus: str, n_samples: int) -> Corpus:
    """The first `n_samples` non-empty records of a corpus (see module docstring)."""
    if corpus == "demo":
        path = demo_corpus_path()
        if not path.is_file():
            raise BadInputError(f"the demo corpus is missing at {path}; build it with "
                                "`workbench demo build-world`", field="corpus")
        return Corpus(_load_file(path, n_samples), "demo:" + _file_label(path))
    path = Path(corpus).expanduser()
    if path.is_file():
        return Corpus(_load_file(path, n_samples), "file:" + _file_label(path))
    if path.suffix or os.sep in corpus:
        raise BadInputError(f"corpus file {corpus} not found", field="corpus")
    return _load_hub(corpus, n_samples)


def _load_hub(name: str, n_samples: int) -> Corpus:
    ds_name, _, config = name.partition(":")
    config = config or HUB_CONFIGS.get(ds_name)
    try:
        ds = _quiet_load(ds_name, config, split="train", streaming=True)
        texts = []
        for rec in ds:
            t = rec.get("text", "")
            if isinstance(t, str) and t.strip():
                texts.append(t.strip())
                if len(texts) >= n_samples:
                    break
    except Exception as e:  # offline, unknown name, script datasets, ...: all mean "not available"
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        fallback = load_corpus("demo", n_samples)
        fallback.note = (f"dataset '{name}' is not available here ({reason}); "
                         "the key statistics use the demo corpus instead")
        return fallback
    return Corpus(texts, f"hub:{ds_name}:{config or ''}")


# ---- statistics ---------------------------------------------------------------------------------

@torch.no_grad()
def collect_second_moments(handle, texts: list[str], layers: list[int], *, dtype=torch.float32,
                           batch_size: int = 16, max_tokens: int = 256, progress=None) -> tuple[dict, int]:
    """Σ k kᵀ over all non-pad tokens of `texts`, for each layer (one forward per batch; the
    products computed once per pair of units, see `add_gram`).

    Returns ({layer: (d_mlp, d_mlp) sum on the model's device}, number of tokens).
    """
    layers = sorted(layers)
    max_tokens = min(max_tokens, handle.max_length)  # never past the model's context
    sums: dict[int, torch.Tensor] = {}
    n_tokens = 0
    tok = handle.tokenizer
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        enc = tok(chunk, return_tensors="pt", padding=True, truncation=True, max_length=max_tokens)
        enc = {k: enc[k].to(handle.device) for k in ("input_ids", "attention_mask")}
        saved = []  # filled inside the trace (a list built there would not survive it)
        with handle.lock, handle.model.trace(enc) as tracer:
            for layer in layers:
                saved.append(handle.envoy(layer, "mlp_out").input.save())
            tracer.stop()  # nothing after the last edited layer is needed
        mask = enc["attention_mask"].bool()                                # (B, T)
        for layer, x in zip(layers, saved):
            K = x[mask].to(dtype)                                          # (N, d_mlp), pads dropped
            sums[layer] = add_gram(sums.get(layer), K)                     # upper block triangle of Σ kkᵀ
        n_tokens += int(mask.sum())
        if progress is not None:
            progress(min(start + batch_size, len(texts)), len(texts), "covariance")
    return {layer: symmetric(s) for layer, s in sums.items()}, n_tokens


def add_gram(acc: torch.Tensor | None, K: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """acc += KᵀK on and above the diagonal blocks, in place (allocated as zeros when None).

    Σ kkᵀ is symmetric, so block row i of it needs only the columns from its diagonal block on:
    Σᵢ b·(d − i) products per token instead of d² (56 % of them for d = 8·b; 2.4× faster for the
    demo model's d_mlp = 8,192 on a CPU core, no (d, d) temporary per batch). The entries below
    the diagonal blocks stay as they were until `symmetric` mirrors the upper triangle once.
    K: (N, d) keys of one batch; acc: (d, d).
    """
    block = block or GRAM_BLOCK
    d = K.shape[1]
    if acc is None:
        acc = torch.zeros(d, d, dtype=K.dtype, device=K.device)
    for i in range(0, d, block):
        acc[i:i + block, i:].addmm_(K[:, i:i + block].T, K[:, i:])  # (b, d − i) += (b, N) @ (N, d − i)
    return acc


def symmetric(acc: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """The full symmetric matrix from `add_gram`'s upper triangle, in place: lower = upperᵀ."""
    block = block or GRAM_BLOCK
    d = acc.shape[0]
    for i in range(0, d, block):
        e = min(i + block, d)
        D = acc[i:e, i:e]
        D.copy_(D.triu() + D.triu(1).T)                  # the diagonal block
        acc[e:, i:e] = acc[i:e, e:].T                    # block column i below it
    return acc


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")[:60] or "x"


def cache_path(cache_dir: Path, handle, layer: int, corpus_label: str, n_samples: int, dtype: str,
               max_tokens: int) -> Path:
    corpus_id = hashlib.blake2b(corpus_label.encode(), digest_size=6).hexdigest()
    name = f"layer{layer}_{_slug(corpus_label.split(':')[0])}-{corpus_id}_{n_samples}_{dtype}_t{max_tokens}.safetensors"
    return cache_dir / f"{_slug(handle.name)}-{handle.base_hash[:12]}" / name


def expected_header(handle, layer, corpus_label, n_samples, dtype, max_tokens) -> dict:
    return {"format": CACHE_FORMAT, "model": handle.name, "base_hash": handle.base_hash,
            "layer": int(layer), "module": f"{handle.spec.layers}.{layer}.{handle.spec.mlp_out}",
            "corpus": corpus_label, "n_samples": int(n_samples), "dtype": dtype,
            "max_tokens": int(max_tokens), "d_mlp": handle.d_mlp_at(layer)}


_MATCH_KEYS = ("format", "base_hash", "layer", "module", "corpus", "n_samples", "dtype", "max_tokens", "d_mlp")


def read_cache(path: Path, expected: dict) -> tuple[CovStats | None, str | None]:
    """(stats, None) on a valid matching file; (None, reason) when missing, mismatched or corrupt."""
    from safetensors import safe_open

    if not path.is_file():
        return None, None
    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})["workbench"])
            C = f.get_tensor("C")
    except Exception as e:
        return None, f"covariance cache {path.name} is unreadable ({type(e).__name__}); recomputed"
    bad = [k for k in _MATCH_KEYS if header.get(k) != expected.get(k)]
    d = expected["d_mlp"]
    if bad:
        return None, f"covariance cache {path.name} does not match ({', '.join(bad)}); recomputed"
    if tuple(C.shape) != (d, d) or str(C.dtype).replace("torch.", "") != expected["dtype"] \
            or not bool(torch.isfinite(C).all()):
        return None, f"covariance cache {path.name} is corrupt (shape, dtype or values); recomputed"
    return CovStats(layer=header["layer"], C=C, n_tokens=int(header.get("n_tokens", 0)),
                    n_records=int(header.get("n_records", 0)), corpus=header["corpus"],
                    from_cache=True, path=str(path)), None


def write_cache(path: Path, header: dict, C: torch.Tensor) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({"C": C.contiguous()}, str(tmp), metadata={"workbench": json.dumps(header)})
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def layer_covariances(handle, layers: list[int], *, corpus: str = "demo", n_samples: int = 100_000,
                      dtype: str = "float32", batch_size: int = 16, max_tokens: int = 256,
                      cache_dir: str | Path | None = None, use_cache: bool = True,
                      progress=None) -> dict[int, CovStats]:
    """C = E[kkᵀ] (Eq. 15, without λ) for each layer, from the cache when a matching file exists.

    Layers missing from the cache are computed together in one pass over the corpus and saved.
    """
    from core.paths import stats_dir

    if dtype not in ("float32", "float64"):
        raise BadInputError(f"'{dtype}' is not float32 or float64", field="stats_dtype")
    layers = handle.check_layers(layers)
    cache_dir = Path(cache_dir) if cache_dir is not None else stats_dir()
    text = load_corpus(corpus, n_samples)
    out, notes = {}, [text.note] if text.note else []
    todo = []
    for layer in layers:
        path = cache_path(cache_dir, handle, layer, text.label, n_samples, dtype, max_tokens)
        header = expected_header(handle, layer, text.label, n_samples, dtype, max_tokens)
        hit, reason = read_cache(path, header) if use_cache else (None, None)
        if reason:
            notes.append(reason)
        if hit is not None:
            out[layer] = hit
        else:
            todo.append((layer, path, header))
    if todo:
        sums, n_tok = collect_second_moments(
            handle, text.texts, [t[0] for t in todo], dtype=getattr(torch, dtype),
            batch_size=batch_size, max_tokens=max_tokens, progress=progress)
        if n_tok == 0:
            raise BadInputError("the corpus gave no tokens", field="corpus")
        for layer, path, header in todo:
            C = (sums[layer] / n_tok).cpu()
            header = dict(header, n_tokens=n_tok, n_records=len(text.texts))
            if use_cache:
                write_cache(path, header, C)
            out[layer] = CovStats(layer=layer, C=C, n_tokens=n_tok, n_records=len(text.texts),
                                  corpus=text.label, from_cache=False, path=str(path) if use_cache else None)
    note = "; ".join(notes) or None
    for s in out.values():
        s.note = note
    return out
