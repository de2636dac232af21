"""One real-browser test: `workbench app` on a free localhost port, driven by headless Chromium.

Debian's `/usr/bin/chromium` through Playwright's Python API (never Playwright's own browser
download; `scripts/ensure-chromium.sh` installs the Debian package). The test walks the user's
path — model → trace → edit → results — asserts on what is visible, saves screenshots to
`test-artifacts/` (and, with UPDATE_SCREENSHOT=1, the README screenshot `docs/screenshot.png`), and stops the server by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (PyPI) is not installed")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is missing: install Debian's chromium (scripts/ensure-chromium.sh)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"the app did not answer at {url} within {timeout:.0f} s")


@contextlib.contextmanager
def running_app(env: dict, log_dir: Path):
    """`workbench app --port P` on a free port with `env` (its own process group, output in
    log_dir/server.log); yields (URL, process) once healthy and stops the server by its PID."""
    exe = Path(sys.executable).parent / "workbench"
    cmd = [str(exe)] if exe.exists() else [shutil.which("workbench") or "workbench"]
    port = free_port()
    with open(log_dir / "server.log", "w") as log:
        proc = subprocess.Popen(cmd + ["app", "--port", str(port)], env=env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, proc)
            yield url, proc
        finally:
            # `workbench app` execs streamlit; its own process group anyway
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    """`workbench app --port P` as a subprocess (own process group); yields its URL."""
    from core.model import demo_model_dir
    from core.paths import stats_dir

    home = tmp_path_factory.mktemp("browser-home")
    env = dict(os.environ, WORKBENCH_HOME=str(home),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    if demo_model_dir().is_dir():
        request.getfixturevalue("demo_key_stats")       # layer 0's C, computed once per session
        shutil.copytree(stats_dir(), home / "stats", dirs_exist_ok=True)
    else:
        from tests.app_helpers import save_app_model

        tiny = str(tmp_path_factory.mktemp("tiny-model"))
        save_app_model(tiny)
        env["WORKBENCH_DEFAULT_MODEL"] = tiny
    with running_app(env, tmp_path_factory.mktemp("browser-log")) as (url, proc):
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        if cmdline.exists():   # `workbench app` became the server: a signal to its PID stops it
            assert b"streamlit" in cmdline.read_bytes()
        yield url


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(120_000)
        try:
            yield pg
        finally:
            browser.close()


def shot(pg, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    return path


def wait_idle(pg, timeout_ms: int = 120_000) -> None:
    """Wait until Streamlit has finished running the script (its status widget is gone)."""
    pg.wait_for_timeout(300)
    pg.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=timeout_ms)


TIMINGS: dict[str, float] = {}


def nav(pg, title: str) -> None:
    """Switch page through the sidebar navigation (same browser session); the time from the
    click to the finished page goes to test-artifacts/timings.json (recorded, not asserted)."""
    t = time.perf_counter()
    pg.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
    pg.get_by_role("heading", name=title).first.wait_for()
    wait_idle(pg)
    TIMINGS[f"page switch: {title}"] = round(time.perf_counter() - t, 3)


def test_trace_edit_results_in_a_real_browser(server, page):
    expect = sync_api.expect
    page.goto(server + "/")
    page.get_by_test_id("stMetric").first.wait_for()
    wait_idle(page)
    assert page.get_by_text("Model card").is_visible()
    assert page.get_by_test_id("stMetricValue").first.inner_text() == "gpt2"
    shot(page, "01-model")

    # trace: one click on a demo-world example, then Trace
    nav(page, "Causal trace")
    page.get_by_text("press Trace").wait_for()
    page.get_by_test_id("stButton").first.locator("button").first.click()
    expect(page.get_by_role("textbox", name="Prompt")).not_to_have_value("")
    wait_idle(page)
    t = time.perf_counter()
    page.get_by_role("button", name="Trace", exact=True).click()
    page.get_by_text("Severed paths at the last subject token").wait_for()
    wait_idle(page)
    TIMINGS["trace (click to finished page)"] = round(time.perf_counter() - t, 3)
    page.get_by_test_id("stPlotlyChart").last.wait_for()       # the severed chart
    assert page.get_by_test_id("stPlotlyChart").count() == 2     # + the open tab's heatmap
    page.get_by_role("tab", name="MLP outputs").click()
    page.get_by_text("Restore the MLP outputs m").wait_for()
    assert page.get_by_text("Suggested edit range R").first.is_visible()
    page.get_by_role("button", name="Use these layers for editing").click()
    page.get_by_text("The Edit page will use R").wait_for()
    shot(page, "02-trace")

    # edit: ten demo-world facts, checked, then MEMIT
    nav(page, "Edit facts")
    page.get_by_role("button", name="10 examples").click()
    page.get_by_text("10 edit(s) ready").wait_for()
    wait_idle(page)
    shot(page, "03-edit")
    t = time.perf_counter()
    page.get_by_role("button", name="Run MEMIT on 10 edit(s)").click()

    # results: the run lands here with metrics, the ΔW chart and generations
    page.get_by_role("heading", name="Metrics before → after").wait_for(timeout=600_000)
    wait_idle(page, timeout_ms=300_000)
    TIMINGS["edit of 10 facts incl. metrics and generations"] = round(time.perf_counter() - t, 3)
    assert page.get_by_text("Score S").first.is_visible()
    assert page.get_by_role("heading", name="Weight change per layer").is_visible()
    assert page.get_by_role("heading", name="Generations before → after").is_visible()
    page.get_by_test_id("stPlotlyChart").first.wait_for()
    path = shot(page, "04-results")
    if os.environ.get("UPDATE_SCREENSHOT"):  # refresh the README's picture on request only
        page.set_viewport_size({"width": 1400, "height": 900})
        page.screenshot(path=str(ROOT / "docs" / "screenshot.png"))
    assert path.stat().st_size > 10_000

    # the history lists the batch; undo brings the model back to clean
    nav(page, "History")
    page.get_by_role("button", name="Undo last batch").click()
    page.get_by_text("undone, bit-exact").wait_for()
    assert page.get_by_text("no edit batches applied").first.is_visible()
    (ARTIFACTS / "timings.json").write_text(json.dumps(TIMINGS, indent=1) + "\n")
