"""Upload limits and server settings. AppTest of the History page's patch size limits on a tiny
model: the uploader takes what the model's limit (core.patch.patch_size_limit) and the server's --max-patch-mb both allow, the page
says which binds and warns before a download that could not be uploaded again, and an uploaded
patch over the model's limit is refused with the sizes, the model unchanged."""

from __future__ import annotations

import math

import pytest
from streamlit import config

import core.patch as patch_mod
from tests.app_helpers import errors, handle_of, open_page, same_weights, weights
from tests.ledger_helpers import record_seeded



@pytest.fixture
def server_mb():
    """Set the server's upload limit (what `workbench app --max-patch-mb` sets) for one test."""
    before = config.get_option("server.maxUploadSize")
    yield lambda mb: config.set_option("server.maxUploadSize", mb)
    config.set_option("server.maxUploadSize", before)


def uploader_limit(at) -> int:
    return at.get("file_uploader")[0].proto.max_upload_size_mb


def test_upload_limit_follows_the_model_and_the_server(tiny_app, server_mb, tmp_path):
    from workbench import loader

    handle = handle_of(tiny_app)
    record_seeded(loader.get_ledger(), handle, [0], 2)      # an undone batch: the page shows a table
    loader.get_ledger().undo(handle)                         # from the first run, as after other tests
    at = open_page("history")
    model_mb = math.ceil(patch_mod.patch_size_limit(handle) / 2**20)
    assert model_mb == 17                      # 8 batches × 3 layers × 16 KB + 16 MB of manifest room
    assert uploader_limit(at) == 17            # AppTest's server allows 200 MB: the model binds
    assert not [c for c in at.caption if "--max-patch-mb" in c.value]

    ledger = loader.get_ledger()
    start = weights(handle)
    try:
        record_seeded(ledger, handle, [0, 1, 2], 0)
        record_seeded(ledger, handle, [1], 1)
        at.run()
        assert not at.exception, at.exception
        # export these two (earlier tests' batches of the same tiny model may be in the workspace)
        ids = [b.id for b in ledger.batches(handle.base_hash, status="applied")][-2:]
        at.multiselect(key="export_pick").set_value(ids).run()
        assert not [w for w in at.warning if "upload" in w.value]     # 64 KB: fits
        server_mb(1)                                                   # workbench app --max-patch-mb 1
        at.run()
        assert uploader_limit(at) == 1
        caption = next(c.value for c in at.caption if "--max-patch-mb" in c.value)
        assert "up to 1 MB" in caption and "up to 17 MB" in caption and "`--max-patch-mb 17`" in caption
        # 64 KB of ΔW plus up to 1 MB of manifest may not fit into 1 MB: said before the download
        warning = next(w.value for w in at.warning if "upload" in w.value)
        assert "This patch holds 64.0 KB of ΔW" in warning and "(1 MB, `workbench app --max-patch-mb`)" in warning
        assert "`workbench session apply FILE`" in warning
    finally:
        while ledger.batches(handle.base_hash, status="applied"):
            ledger.undo(handle)
    assert same_weights(start, weights(handle))


def test_uploaded_patch_over_the_model_limit_is_refused(tiny_app, monkeypatch, tmp_path):
    from workbench import loader

    handle = handle_of(tiny_app)
    ledger = loader.get_ledger()
    start = weights(handle)
    record_seeded(ledger, handle, [0, 1, 2], 0)
    record_seeded(ledger, handle, [1], 1)
    ids = [b.id for b in ledger.batches(handle.base_hash, status="applied")]
    patch = patch_mod.export_patch(ledger, ids, tmp_path / "two.safetensors")
    while ledger.batches(handle.base_hash, status="applied"):
        ledger.undo(handle)
    assert same_weights(start, weights(handle))
    n_batches = len(ledger.batches())
    monkeypatch.setattr(patch_mod, "LIMIT_BATCHES", 1)        # room for 3 ΔW (48 KB); the patch holds 4
    monkeypatch.setattr(patch_mod, "LIMIT_MANIFEST_BYTES", 0)
    at = open_page("history")
    at.get("file_uploader")[0].set_value(("two.safetensors", patch.read_bytes(), "application/octet-stream")).run()
    at.button(key="apply_patch").click().run()
    assert not at.exception, at.exception
    msgs = errors(at)
    assert len(msgs) == 1 and "two.safetensors is" in msgs[0] and "limited to 48.0 KB" in msgs[0], msgs
    assert same_weights(start, weights(handle)) and len(ledger.batches()) == n_batches


def test_app_command_lets_patches_past_the_request_limit():
    from workbench.cli.basic import app_command

    cmd = app_command(8600, "127.0.0.1", 20, 512)
    assert cmd[cmd.index("--server.maxUploadSize") + 1] == "512"       # the server takes patches up to 512 MB
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    cmd = app_command(8600, "127.0.0.1", 50, 10)
    assert cmd[cmd.index("--server.maxUploadSize") + 1] == "50"


@pytest.mark.parametrize("flag", ["--max-upload-mb", "--max-patch-mb"])
def test_app_limits_below_one_are_refused_before_the_server_starts(flag, capsys):
    from workbench.cli import main

    assert main(["app", flag, "0"]) == 2
    err = capsys.readouterr().err
    assert f"{flag[2:]}: must be ≥ 1, got 0" in err


@pytest.mark.parametrize("env, server, expected", [(None, 200, 200), ("20", 512, 20), ("900", 512, 512),
                                                   ("0", 512, 512), ("x", 512, 512)])
def test_request_upload_limit_reads_the_app_flag(env, server, expected, monkeypatch):
    from workbench.edit_flow import UPLOAD_ENV, request_upload_mb

    if env is None:
        monkeypatch.delenv(UPLOAD_ENV, raising=False)
    else:
        monkeypatch.setenv(UPLOAD_ENV, env)
    assert request_upload_mb(server) == expected


def test_edit_page_holds_request_files_to_their_own_limit(tiny_app, server_mb, monkeypatch):
    from workbench.edit_flow import UPLOAD_ENV

    server_mb(512)                                  # workbench app --max-upload-mb 3 --max-patch-mb 512
    monkeypatch.setenv(UPLOAD_ENV, "3")
    at = open_page("edit")
    assert not at.exception, at.exception
    assert uploader_limit(at) == 3
    assert "At most 3 MB." in at.get("file_uploader")[0].proto.help
    at = open_page("history")
    assert uploader_limit(at) == 17                 # the patch uploader: the model's limit binds, not 3 MB


def test_plain_streamlit_run_from_the_repository_binds_localhost(monkeypatch):
    """`streamlit run workbench/app.py` from the repository reads .streamlit/config.toml."""
    from pathlib import Path

    from streamlit import config as st_config

    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    try:
        st_config.get_config_options(force_reparse=True)
        assert st_config.get_option("server.address") == "127.0.0.1"
        assert st_config.get_option("browser.gatherUsageStats") is False
    finally:
        monkeypatch.undo()
        st_config.get_config_options(force_reparse=True)
