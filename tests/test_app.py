"""AppTest tests of the Streamlit workbench: every page renders, and the main flows work.

The app runs in-process (`streamlit.testing.v1.AppTest`) on the demo model when it is built, else
on a tiny random GPT-2 saved to a folder (the loader honours WORKBENCH_DEFAULT_MODEL). The model
is loaded once per test process (st.cache_resource) and shared by every AppTest instance, as the
real server shares it between browser sessions.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from workbench.state import DEFAULT_MODEL_ENV

APP = Path(__file__).resolve().parent.parent / "workbench" / "app.py"


@pytest.fixture(scope="module")
def app_model(tmp_path_factory):
    """The model name the app opens with (demo model, or a tiny model folder)."""
    from core.model import demo_model_dir

    if demo_model_dir().is_dir():
        name = "demo"
    else:
        from tests.tiny import save_tiny_model

        name = str(tmp_path_factory.mktemp("tiny-model"))
        save_tiny_model(name)
    old = os.environ.get(DEFAULT_MODEL_ENV)
    os.environ[DEFAULT_MODEL_ENV] = name
    yield name
    if old is None:
        os.environ.pop(DEFAULT_MODEL_ENV, None)
    else:
        os.environ[DEFAULT_MODEL_ENV] = old


def new_app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=60)


def open_page(name: str) -> AppTest:
    at = new_app().run()
    assert not at.exception, at.exception
    at.switch_page(f"../pages/{name}.py").run()
    assert not at.exception, at.exception
    return at


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


# ---- model page ---------------------------------------------------------------------------------

def test_model_page_shows_card(app_model):
    from workbench import loader

    at = new_app().run()
    assert not at.exception, at.exception
    assert not errors(at)
    handle = loader.get_handle(loader.model_key(app_model))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Layers"] == str(handle.n_layers)
    assert metrics["Hidden width (d_model)"] == str(handle.d_model)
    assert metrics["MLP width (d_mlp)"] == str(handle.d_mlp)
    assert metrics["Family"] == "gpt2"


def test_model_page_bad_folder_is_readable_and_keeps_model(app_model):
    at = new_app().run()
    at.text_input[0].set_value("/nonexistent/model-folder")
    at.button[0].click().run()
    assert not at.exception, at.exception
    msgs = errors(at)
    assert any("does not exist" in m and "/nonexistent/model-folder" in m for m in msgs), msgs
    assert at.session_state["workbench_state"].model_name == app_model
    assert {m.label for m in at.metric} >= {"Layers"}      # the card of the old model is still there
