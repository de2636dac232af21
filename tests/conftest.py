"""Test set-up: one torch thread, HF offline, tiny in-memory models of every family."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests never write into the user's real workspace.
os.environ["WORKBENCH_HOME"] = tempfile.mkdtemp(prefix="workbench-test-home-")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.tiny import FAMILIES, make_tiny_handle  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tiny_handle():
    """A fresh tiny random GPT-2 handle (3 layers, d=32): safe to edit in a test."""
    return make_tiny_handle("gpt2")


@pytest.fixture(params=FAMILIES)
def family_handle(request):
    """A fresh tiny handle for each of the six supported families."""
    return make_tiny_handle(request.param)


@pytest.fixture(scope="session")
def demo_handle():
    """The shipped demo model (loaded once per test session; do not edit it in place —
    edit tests restore weights or use `fresh_demo_handle`)."""
    from core.model import demo_model_dir, load_model

    if not demo_model_dir().is_dir():
        pytest.skip("demo model not built yet (workbench demo train)")
    return load_model("demo", device="cpu")


@pytest.fixture(scope="session")
def demo_key_stats(demo_handle):
    """Layer 0's key statistics C for the demo preset, computed once per test session into this
    session's cache (WORKBENCH_HOME/stats). The demo model's key room makes C 8,192² — minutes on
    one thread — so the app tests (whose runs time out after 60 s) and the browser test read it
    from there instead of computing it inside an edit."""
    from core.hparams import preset_for
    from core.memit import key_statistics

    hp = preset_for(demo_handle)
    return key_statistics(demo_handle, hp, hp.layers)


@pytest.fixture(scope="module")
def app_model(tmp_path_factory, request):
    """The model name the AppTest tests' app opens with (demo model, or a tiny model folder)."""
    from core.model import demo_model_dir
    from tests.app_helpers import default_model, save_app_model

    if demo_model_dir().is_dir():
        request.getfixturevalue("demo_key_stats")       # warm the key-statistics cache first
        name = "demo"
    else:
        name = str(tmp_path_factory.mktemp("tiny-model"))
        save_app_model(name)
    with default_model(name):
        yield name


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """CLI editing tests: the CLI loads a tiny GPT-2, with a small corpus and its own workspace."""
    import workbench.cli.common as common
    from tests.memit_helpers import write_corpus
    from tests.tiny import make_tiny_handle

    handle = make_tiny_handle("gpt2")
    monkeypatch.setattr(common, "load_from_args", lambda args: handle)
    corpus = write_corpus(tmp_path / "corpus.txt")
    opts = ["--layers", "0,1", "--steps", "3", "--corpus", corpus, "--n-samples", "50",
            "--workspace", str(tmp_path / "ws")]
    return handle, opts, tmp_path


@pytest.fixture(scope="module")
def tiny_app(tmp_path_factory):
    """The app opens on a tiny random GPT-2 saved as a folder (one per test module); yields its path."""
    from tests.app_helpers import default_model, save_app_model

    name = str(tmp_path_factory.mktemp("tiny-app-model"))
    save_app_model(name)
    with default_model(name):
        yield name
