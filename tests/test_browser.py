"""End-to-end in a real browser: `streamlit run app.py` + Playwright on Debian's Chromium.

Walks home -> quick start -> sensitivity (click a heatmap cell) -> mapping -> export -> download,
and saves a screenshot of each page and the walk's timings. They go to a temporary folder, so the
test command leaves the checkout clean; `PARAKNOW_SCREENSHOTS=1` writes them to docs/screenshots/
instead, to refresh the README's images. Skips when Chromium or Playwright is missing. Uses the
demo pair unless PARAKNOW_APP_TEACHER / PARAKNOW_APP_STUDENT name other models.

Every wait is for the condition that proves a step finished (a text, an element, the app's
script state, the charts drawn), never a fixed sleep.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from waiting import wait_until

pytestmark = pytest.mark.browser  # a real browser: run with -m browser, left out of the fast lane

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS_ENV = "PARAKNOW_SCREENSHOTS"  # =1: refresh docs/screenshots/ (the README's images)
SHOTS = (ROOT / "docs" / "screenshots" if os.environ.get(SCREENSHOTS_ENV) == "1"
         else Path(tempfile.gettempdir()) / f"paraknow-screenshots-{os.getuid()}")
TIMEOUT_MS = 300_000  # generous: other jobs may share the CPU
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"  # the script run is over
SETTLED_JS = """() => !document.querySelector(
  '[data-stale="true"], [data-testid="stSkeleton"], [data-testid="stSkeletonElement"]')"""
PLOTS_DRAWN_JS = """() => [...document.querySelectorAll('.js-plotly-plot')].filter(p => p.clientWidth > 0).every(
  p => p._fullLayout && p.querySelector('.main-svg') && Math.abs(p._fullLayout.width - p.clientWidth) <= 1)"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    wait_until(healthy, seconds, f"streamlit at {url} to answer its health check", interval=0.25)


@contextlib.contextmanager
def streamlit_app(env: dict):
    """`streamlit run app.py` on a free loopback port; yields its URL and stops it afterwards."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.headless", "true", "--server.address", "127.0.0.1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    env = dict(os.environ)
    env["PARAKNOW_CACHE"] = str(tmp_path_factory.mktemp("browser-cache"))
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    with streamlit_app(env) as url:
        yield url, Path(env["PARAKNOW_CACHE"])


def _settle(page) -> None:
    """Wait until the app is idle: the script run is over (stApp's data-test-script-state), no
    element is stale from the previous run or still a loading placeholder (Streamlit loads each
    element type's code on first use and shows a skeleton meanwhile), and every chart is drawn."""
    page.wait_for_selector(IDLE, timeout=TIMEOUT_MS)
    page.wait_for_function(SETTLED_JS, timeout=TIMEOUT_MS)
    page.wait_for_function(PLOTS_DRAWN_JS, timeout=TIMEOUT_MS)


def _shot(page, name: str) -> None:
    """Screenshot of the whole page: Streamlit scrolls inside stMain, so grow the viewport to fit it."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = page.evaluate("() => document.querySelector('[data-testid=stMain]').scrollHeight")
    page.set_viewport_size({"width": 1440, "height": min(int(height) + 40, 8000)})
    page.wait_for_function(PLOTS_DRAWN_JS, timeout=TIMEOUT_MS)  # plotly redraws at the new size
    page.screenshot(path=str(SHOTS / f"{name}.png"))
    page.set_viewport_size({"width": 1440, "height": 1000})
    page.wait_for_function(PLOTS_DRAWN_JS, timeout=TIMEOUT_MS)


def _goto(page, title: str, marker: str) -> None:
    """Open a page from the sidebar and wait until it is drawn: its URL, then a text only it shows
    (the script state alone does not prove the switch has started)."""
    page.locator("[data-testid='stSidebarNav']").get_by_text(title, exact=True).click()
    page.wait_for_url(re.compile(rf"/{re.escape(title)}(\?|$)"), timeout=TIMEOUT_MS)  # the query holds the session
    page.get_by_text(marker, exact=False).first.wait_for(timeout=TIMEOUT_MS)
    _settle(page)


def _quick_start(page) -> None:
    """Click the home page's quick start once the first script run has settled (a click while the
    page is still drawing can be lost), then wait until it is done and the page has settled."""
    page.get_by_text("Quick start on the demo pair").first.wait_for()
    _settle(page)
    page.get_by_role("button", name="Quick start on the demo pair").click()
    page.get_by_text("Quick start done").first.wait_for()
    _settle(page)


def _no_errors(page) -> None:
    errors = page.locator("[data-testid='stException'], [data-testid='stAlertContentError']")
    assert errors.count() == 0, errors.first.inner_text()


def test_full_flow_in_browser(server):
    from playwright.sync_api import expect, sync_playwright

    url, cache = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
        page.set_default_timeout(TIMEOUT_MS)
        walk_start = time.time()
        page.goto(url)
        page.get_by_text("Quick start on the demo pair").first.wait_for()
        _settle(page)
        _no_errors(page)

        waited = {}  # seconds spent waiting for the app after each action (recorded, not asserted)
        t0 = time.time()
        _quick_start(page)
        waited["quick start"] = time.time() - t0
        _no_errors(page)
        _shot(page, "1_home")

        _goto(page, "Models", "Compatibility")
        _no_errors(page)
        _shot(page, "2_models")

        _goto(page, "Sensitivity", "Layers × modules")
        page.locator(".js-plotly-plot").first.wait_for()
        _no_errors(page)
        # click a heatmap cell: its invisible marker (customdata [layer, module], one per cell, row by row
        # over the 7 modules) is located, and plotly's drag layer above it takes the click
        cell = page.locator(".js-plotly-plot").first.locator(".scatterlayer .point").nth(5 * 7 + 4)
        cell.scroll_into_view_if_needed()
        cell.click(force=True)  # layer 5, gate_proj
        module = page.locator("[data-testid='stSelectbox']").filter(has_text="Module").first.locator("input")
        layer = page.locator("[data-testid='stSelectbox']").filter(has_text="Layer").first.locator("input")
        expect(module).to_have_value("gate_proj", timeout=TIMEOUT_MS)  # the drill-down followed the click
        expect(layer).to_have_value("5", timeout=TIMEOUT_MS)
        _settle(page)
        _no_errors(page)
        _shot(page, "3_sensitivity")

        _goto(page, "Mapping", "Selection preview")
        _no_errors(page)
        # edit the mapping by hand: student layer 0 <- teacher layer 5, in the table editor
        page.get_by_role("button", name="Edit this mapping by hand").click()
        page.get_by_text("Edit the teacher column").wait_for()
        _settle(page)
        editor = page.locator("[data-testid='stDataFrame']").first
        editor.scroll_into_view_if_needed()
        box = editor.bounding_box()
        page.mouse.dblclick(box["x"] + box["width"] * 0.75, box["y"] + 35 * 1.5)
        page.get_by_role("option", name="5", exact=True).click()
        _settle(page)
        page.locator("[data-testid='stSidebar']").get_by_text("mapping: [5,").wait_for()
        _settle(page)
        _no_errors(page)
        _shot(page, "4_mapping")

        t0 = time.time()
        _goto(page, "Export", "Export name")
        page.get_by_role("button", name="Export", exact=True).click()
        page.get_by_text("Saved to").first.wait_for()
        _settle(page)
        waited["export"] = time.time() - t0
        _no_errors(page)
        with page.expect_download() as info:
            page.get_by_role("button", name="Download as zip").click()
        data = Path(info.value.path()).read_bytes()
        walk_seconds = time.time() - walk_start  # first page load to the zip in hand (screenshots included)
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        assert any(n.endswith("/paraknow.json") for n in names)
        assert any(n.endswith("/adapter_model.safetensors") for n in names)
        page.get_by_role("button", name="Verify with plain PEFT").click()
        page.get_by_text("Maximum logit change").first.wait_for()
        _settle(page)
        _no_errors(page)
        _shot(page, "5_export")
        browser.close()
    waited = {k: round(v, 1) for k, v in waited.items()}
    (SHOTS / "walk_timings.json").write_text(json.dumps({**waited, "walk to downloaded zip": round(walk_seconds, 1)}) + "\n")
    exports = [d for d in (cache / "exports").iterdir() if not d.name.startswith(".")]
    assert exports and json.loads((exports[0] / "paraknow.json").read_text())["modules"]


def test_direct_link_on_a_fresh_server_opens_its_page(tmp_path):
    """The first request to a just-started server is a deep link (/Sensitivity): Streamlit's legacy pages/
    mode is still on then; the page must come up inside the app, with no 'Page not found' dialog."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    from playwright.sync_api import sync_playwright

    env = dict(os.environ, PARAKNOW_CACHE=str(tmp_path / "cache"), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    with streamlit_app(env) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url + "/Sensitivity")
        page.get_by_text("Load a teacher and a student first").first.wait_for()
        _settle(page)
        assert page.get_by_role("heading", name="Sensitivity").count() >= 1
        assert page.get_by_text("Page not found").count() == 0
        assert page.locator("[data-testid='stSidebar']").get_by_text("This session").count() == 1  # app.py ran
        browser.close()
