"""Shared set-up of the AppTest tests (tests/test_app_*.py): the model the app opens with and
small readers of what a page shows.

The app runs in-process (`streamlit.testing.v1.AppTest`) on the demo model when it is built, else
on a tiny random GPT-2 saved to a folder (the loader honours WORKBENCH_DEFAULT_MODEL). The model
is loaded once per test process (st.cache_resource) and shared by every AppTest instance, as the
real server shares it between browser sessions. Edits are undone by the tests that make them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest


APP = Path(__file__).resolve().parent.parent / "workbench" / "app.py"


def save_app_model(path) -> None:
    """A tiny random GPT-2 (3 layers, d=32) with room for 512 positions (corpus lines of the demo
    world are long in the tiny tokenizer), saved as a standard HF folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.tiny import make_tokenizer

    torch.manual_seed(0)
    tok = make_tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=3, n_head=4,
                                       n_positions=512, bos_token_id=tok.bos_token_id,
                                       eos_token_id=tok.eos_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)


@contextlib.contextmanager
def default_model(name: str):
    """The app opens with model `name` (WORKBENCH_DEFAULT_MODEL) inside the block; restored after."""
    from workbench.state import DEFAULT_MODEL_ENV

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DEFAULT_MODEL_ENV, name)
        yield name


def new_app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=60)


def open_page(name: str) -> AppTest:
    at = new_app().run()
    assert not at.exception, at.exception
    at.switch_page(f"../pages/{name}.py").run()
    assert not at.exception, at.exception
    return at


def unescape(md: str) -> str:
    """Markdown as the user reads it (the app backslash-escapes user text)."""
    return re.sub(r"\\(.)", r"\1", md)


def errors(at: AppTest) -> list[str]:
    return [unescape(e.value) for e in at.error]


def plotly_specs(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def array(obj) -> np.ndarray:
    """A plotly array from a figure's JSON (plain list or base64 'bdata' with dtype and shape)."""
    if isinstance(obj, dict) and "bdata" in obj:
        a = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"]))
        shape = obj.get("shape")
        return a.reshape([int(x) for x in str(shape).split(",")]) if shape else a
    return np.asarray(obj)


def handle_of(name: str):
    from workbench import loader

    return loader.get_handle(loader.model_key(name))


def weights(handle) -> dict[int, torch.Tensor]:
    return {i: handle.mlp_out_weight(i).detach().clone() for i in range(handle.n_layers)}


def same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(a[i], b[i]) for i in a)
