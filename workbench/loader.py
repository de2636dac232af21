"""The app's model loader: one handle per (name, device, dtype), shared by every browser session.

`st.cache_resource` keeps the loaded handle for the life of the server process; all sessions get
the same object and serialise their traces and weight edits on `handle.lock` (core functions hold
it). Failed loads are not cached, so a fixed path or a restored network works on the next try.

A freshly loaded model gets the workspace's edit history replayed onto it (`Ledger.replay`), so
after an app restart the model is in the state the History page shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from core.errors import ModelLoadError, WorkbenchError
from core.ledger import Ledger, ReplayReport
from core.model import ModelHandle, default_device, load_model
from core.paths import workspace_dir

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


@dataclass
class Loaded:
    """A loaded model and what happened when its edit history was replayed onto it."""

    handle: ModelHandle
    replay: ReplayReport | None = None
    replay_error: str | None = None


@st.cache_resource(show_spinner=False)
def _ledger(workspace: str) -> Ledger:
    return Ledger(workspace)


def get_ledger() -> Ledger:
    """The workspace's edit ledger (one object per workspace, shared; it is thread-safe)."""
    return _ledger(str(workspace_dir()))


@st.cache_resource(show_spinner=False, max_entries=3)
def _load(name: str, device: str, dtype: str, trust_remote_code: bool, workspace: str) -> Loaded:
    handle = load_model(name, device=device, dtype=None if dtype == "auto" else dtype,
                        trust_remote_code=trust_remote_code)
    try:
        return Loaded(handle, replay=_ledger(workspace).replay(handle))
    except WorkbenchError as err:  # a damaged batch must not make the model unusable
        return Loaded(handle, replay_error=str(err))


def get_handle(key: tuple) -> ModelHandle:
    """The shared handle for a `model_key(...)`; raises ModelLoadError (never cached) on failure."""
    return loaded(key).handle


def loaded(key: tuple) -> Loaded:
    """Like `get_handle`, with the replay report."""
    name = key[0]
    if not name:
        raise ModelLoadError("enter 'demo', a HuggingFace hub id or a local folder")
    if _looks_like_path(name) and not Path(name).expanduser().is_dir():
        raise ModelLoadError(f"the folder '{name}' does not exist on this machine")
    return _load(*key, str(workspace_dir()))


def applied_batches(handle) -> int:
    """How many batches of the ledger are applied to this model's weights."""
    return len(get_ledger().batches(handle.base_hash, status="applied"))

