"""Page 7 (Study) in a real browser: `streamlit run app.py` + Playwright on Debian's Chromium.

Pastes a recipe on tiny saved models (2 arms x 3 seeds, vanilla with a 2-rate sweep: 9 runs),
launches it, sees partial results, stops it, resumes it, reloads the browser mid-study (the study
is found again on disk), and sees the final per-arm table and the chart. Screenshots go to
docs/screenshots/7_*.png. Skips when Chromium or Playwright is missing.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from study_fixtures import study_inputs, tiny_recipe
from test_browser import CHROMIUM, _no_errors, _settle, _shot, streamlit_app

pytestmark = pytest.mark.browser  # a real browser: run with -m browser, left out of the fast lane

TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    root = tmp_path_factory.mktemp("study-browser")
    cache = root / "cache"
    env = dict(os.environ, PARAKNOW_CACHE=str(cache), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    env.setdefault("OMP_NUM_THREADS", "1")
    try:
        with streamlit_app(env) as url:
            yield url, root
    finally:
        for study in (cache / "studies").glob("*/"):  # a failed test must not leave a study running
            (study / "STOP").write_text("test teardown\n")


def _dismiss_page_not_found(page) -> None:
    """After a reload of /Study Streamlit may show a spurious "Page not found" dialog (see
    test_browser_finetune); the page itself still runs."""
    page.get_by_role("heading", name="Study").first.wait_for()
    _settle(page)
    dialog = page.get_by_text("Page not found")
    if dialog.count():
        page.keyboard.press("Escape")
        dialog.first.wait_for(state="detached")


def _wait_finished(page, counts, timeout_ms: int = 600_000) -> None:
    """Wait until the page says one of `counts` out of 9 runs finished."""
    pattern = re.compile(r"(?<!\d)(?:" + "|".join(str(n) for n in counts) + r")/9 runs finished")
    page.get_by_text(pattern).first.wait_for(timeout=timeout_ms)


def _finished(page) -> tuple[int, int]:
    text = page.get_by_text(re.compile(r"\d+/\d+ runs finished")).first.inner_text()
    done, total = re.search(r"(\d+)/(\d+) runs finished", text).groups()
    return int(done), int(total)


def test_study_launch_partial_reload_stop_resume(server):
    from playwright.sync_api import sync_playwright

    url, root = server
    recipe = tiny_recipe(study_inputs(root / "in"), seeds=[0, 1, 2])
    recipe["train"]["epochs"] = 12  # 24 steps a run: a few seconds each, so the study is seen mid-way
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.get_by_text("Quick start").first.wait_for()
        _settle(page)
        page.locator("[data-testid='stSidebarNav']").get_by_text("Study", exact=True).click()
        page.get_by_text("No studies yet").first.wait_for()
        _settle(page)
        _no_errors(page)
        page.get_by_role("tab", name="Load a recipe").click()
        page.locator("textarea").first.fill(json.dumps(recipe, indent=1))
        page.locator("textarea").first.press("Control+Enter")
        _settle(page)
        page.get_by_role("button", name="Use this recipe").click()
        page.get_by_text("2 arms, 9 runs").first.wait_for()
        page.locator("[data-testid='stTextInput']").filter(has_text="Study name").locator("input").fill("browser")
        page.locator("[data-testid='stTextInput']").filter(has_text="Study name").locator("input").press("Enter")
        _settle(page)
        page.get_by_role("button", name="Launch").click()
        page.get_by_text(re.compile(r"\d+/9 runs finished")).first.wait_for()

        _wait_finished(page, range(1, 9))
        done, total = _finished(page)
        assert total == 9 and 1 <= done < total
        _no_errors(page)
        _shot(page, "7_study_running")
        page.get_by_role("button", name="Stop", exact=True).click()
        page.get_by_text("stopped", exact=True).first.wait_for(timeout=300_000)
        stopped_at = _finished(page)[0]
        assert stopped_at < 9

        # the enabled one: a redraw of the live panel can briefly leave its stale, disabled copy beside it
        page.get_by_role("button", name="Resume", exact=True).and_(page.locator("button:enabled")).click()
        _wait_finished(page, range(stopped_at + 1, 10))
        page.reload()  # mid-study: the study goes on in its own process and is found again on disk
        _dismiss_page_not_found(page)
        page.get_by_text(re.compile(r"\d+/9 runs finished")).first.wait_for()
        _no_errors(page)
        _wait_finished(page, [9])
        page.get_by_text("finished", exact=True).first.wait_for()
        _settle(page)
        _no_errors(page)
        bars = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].flatMap("
                             "p => p.data.filter(t => t.type === 'bar').flatMap(t => t.x))")
        assert bars == ["vanilla", "pkt"]
        assert page.locator("[data-testid='stDataFrame']").count() >= 2  # arms and signals
        _shot(page, "7_study_finished")
        browser.close()

    results = json.loads((root / "cache" / "studies" / "browser" / "results.json").read_text())
    assert [c["state"] for c in results["cells"]] == ["finished"] * 9
