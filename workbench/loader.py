"""The app's model loader: one handle per (name, device, dtype), shared by every browser session.

`st.cache_resource` keeps the loaded handle for the life of the server process; all sessions get
the same object and serialise their traces and weight edits on `handle.lock` (core functions hold
it). Failed loads are not cached, so a fixed path or a restored network works on the next try.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.errors import ModelLoadError
from core.model import ModelHandle, default_device, load_model

DTYPES = ["auto", "float32", "bfloat16", "float16"]


def devices() -> list[str]:
    """Devices offered in the UI: 'auto' plus what torch can see."""
    import torch

    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return out


def model_key(name: str, device: str = "auto", dtype: str = "auto",
              trust_remote_code: bool = False) -> tuple:
    """Normalised cache key: local folders as absolute paths, 'auto' resolved to a device."""
    name = name.strip()
    if name and Path(name).expanduser().is_dir():
        name = str(Path(name).expanduser().resolve())
    device = default_device() if device in ("", "auto", None) else device
    dtype = "auto" if dtype in ("", None) else dtype
    return (name, device, dtype, bool(trust_remote_code))


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..")


@st.cache_resource(show_spinner=False, max_entries=3)
def _load(name: str, device: str, dtype: str, trust_remote_code: bool) -> ModelHandle:
    return load_model(name, device=device, dtype=None if dtype == "auto" else dtype,
                      trust_remote_code=trust_remote_code)


def get_handle(key: tuple) -> ModelHandle:
    """The shared handle for a `model_key(...)`; raises ModelLoadError (never cached) on failure."""
    name = key[0]
    if not name:
        raise ModelLoadError("enter 'demo', a HuggingFace hub id or a local folder")
    if _looks_like_path(name) and not Path(name).expanduser().is_dir():
        raise ModelLoadError(f"the folder '{name}' does not exist on this machine")
    return _load(*key)

