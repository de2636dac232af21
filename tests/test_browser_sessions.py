"""Real-browser checks of app sessions that AppTest cannot make: the URL path of a reload, two
tabs on one session (Streamlit's own sessions and their connection state), and no request to
another host (the favicon is the app's own file).

`workbench app` on a free localhost port with a tiny random GPT-2, Debian's headless Chromium
through Playwright (skipped with the reason when missing, as tests/test_browser.py)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, running_app, wait_idle

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (PyPI) is not installed")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is missing: install Debian's chromium (scripts/ensure-chromium.sh)"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`workbench app --port P` on a tiny model in a fresh workspace; yields (URL, workspace)."""
    from tests.app_helpers import save_app_model

    home = tmp_path_factory.mktemp("browser-sessions-home")
    tiny = str(tmp_path_factory.mktemp("browser-sessions-model"))
    save_app_model(tiny)
    env = dict(os.environ, WORKBENCH_HOME=str(home), WORKBENCH_DEFAULT_MODEL=tiny, OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    with running_app(env, tmp_path_factory.mktemp("browser-sessions-log")) as (url, _):
        yield url, home


def session_on(pg) -> str | None:
    return parse_qs(urlparse(pg.url).query).get("session", [None])[0]


def open_tab(context, url: str):
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(url)
    ready(pg)
    return pg


def ready(pg) -> None:
    pg.get_by_test_id("stSidebarNav").wait_for()
    wait_idle(pg)


def test_reload_keeps_page_and_session_a_duplicated_tab_continues_as_a_copy(server):
    url, home = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        elsewhere = []
        context.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:"))
                   else elsewhere.append(r.url))
        try:
            a = open_tab(context, url)
            sid = session_on(a)
            # the favicon is the app's own file (a ":material/…:" icon is fetched from fonts.gstatic.com)
            assert a.locator('link[rel~="icon"]').first.get_attribute("href").startswith(f"{url}/media/")
            a.get_by_test_id("stSidebarNav").get_by_text("Causal trace", exact=True).click()
            a.get_by_role("heading", name="Causal trace").first.wait_for()
            wait_idle(a)
            a.get_by_role("textbox", name="Prompt").fill("Miles Davis plays the")
            a.get_by_role("textbox", name="Subject").fill("Miles Davis")
            a.get_by_role("button", name="Trace", exact=True).click()
            a.get_by_text("Severed paths at the last subject token").wait_for()
            wait_idle(a)
            assert urlparse(a.url).path == "/trace" and session_on(a) == sid
            assert (home / "app" / "sessions" / sid / "state.json").is_file()
            # a reload: a new Streamlit session, same URL → same page, same workbench session, its trace
            a.reload()
            ready(a)
            assert urlparse(a.url).path == "/trace" and session_on(a) == sid
            a.get_by_text("Severed paths at the last subject token").wait_for()    # visible, or a timeout
            # the tab duplicated: the copy gets its own id and says so; the first tab keeps its id
            b = open_tab(context, a.url)
            b.get_by_text("is open in another tab too").wait_for()
            copy = session_on(b)
            assert copy != sid and urlparse(b.url).path == "/trace"
            b.get_by_text("Severed paths at the last subject token").wait_for()
            a.reload()
            ready(a)
            assert session_on(a) == sid
            # the first tab closed: its session opens without a copy
            a_url = a.url
            a.close()
            b.wait_for_timeout(500)                  # (margin for the server to see the socket close)
            c = open_tab(context, a_url)
            assert session_on(c) == sid and c.get_by_text("is open in another tab too").count() == 0
            assert session_on(b) == copy
            assert (home / "app" / "sessions" / copy / "state.json").is_file()
            assert elsewhere == []                   # nothing fetched from another host (offline-safe)
        finally:
            browser.close()
