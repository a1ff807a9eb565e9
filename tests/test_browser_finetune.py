"""Page 6 (Fine-tune) in a real browser: `streamlit run app.py` + Playwright on Debian's Chromium.

Launches a real run of the demo student from the page (task:arith:train at batch 4, 750 steps,
evaluating 4 test records every 5 steps), watches the live chart grow, reloads the browser (the run
is found again on disk), stops the run from the page, sees `stopped` and downloads the adapter.
Screenshots (6_*.png) go where tests/test_browser.py puts them: a temporary folder, or
docs/screenshots/ with PARAKNOW_SCREENSHOTS=1. Skips when Chromium, Playwright or the demo pair is
missing; PARAKNOW_APP_STUDENT may name another (small, local) student instead of demo:student.

The server/browser helpers are shared with tests/test_browser.py (imported from it).
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest
from test_browser import CHROMIUM, _goto, _settle, _shot, streamlit_app

pytestmark = pytest.mark.browser  # a real browser: run with -m browser, left out of the fast lane

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_MS = 90_000
CURVE_POINTS_JS = """() => {
  const plots = [...document.querySelectorAll('.js-plotly-plot')];
  const g = plots.find(p => (p.layout && p.layout.annotations || []).some(a => a.text === 'training loss'));
  if (!g || !g.data) return -1;
  return g.data.reduce((n, t) => n + (t.x ? t.x.length : 0), 0);
}"""


def _student_ref() -> str:
    ref = os.environ.get("PARAKNOW_APP_STUDENT")
    if ref:
        return ref
    if not (ROOT / "paraknow" / "demo_models" / "student" / "config.json").is_file():
        pytest.skip("the demo pair is missing (python -m paraknow.demo builds it); "
                    "or set PARAKNOW_APP_STUDENT to a small local model")
    return "demo:student"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    _student_ref()
    cache = tmp_path_factory.mktemp("finetune-browser-cache")
    env = dict(os.environ, PARAKNOW_CACHE=str(cache), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    env.setdefault("OMP_NUM_THREADS", "1")  # the run's process: leave a core to the browser and the server
    try:
        with streamlit_app(env) as url:
            yield url, cache
    finally:
        _stop_leftover_runs(cache)


def _stop_leftover_runs(cache: Path) -> None:
    """A failed test must not leave a training process behind: ask every run to stop."""
    for run_dir in (cache / "runs").glob("*/"):
        if (run_dir / "spec.json").is_file() and not (run_dir / "STOP").exists():
            (run_dir / "STOP").write_text("test teardown\n")


PAGE_MARKER = "Train the student's LoRA from the standard init"  # the Fine-tune page's caption, on no other page


def _open_finetune(page) -> None:
    _goto(page, "Fine-tune", PAGE_MARKER)


def _reloaded(page) -> None:
    """After a reload of the Fine-tune page's URL: the page is back and its script run is over,
    with no "Page not found" dialog (page URL names match the legacy pages/ names)."""
    page.get_by_text(PAGE_MARKER).first.wait_for()
    _settle(page)
    assert page.get_by_text("Page not found").count() == 0


def _set_number(page, label: str, value) -> None:
    box = page.locator("[data-testid='stNumberInput']").filter(has_text=label).first.locator("input")
    box.fill(str(value))
    box.press("Enter")
    _settle(page)


def _no_errors(page) -> None:
    errors = page.locator("[data-testid='stException'], [data-testid='stAlertContentError']")
    assert errors.count() == 0, errors.first.inner_text()


def _wait_points(page, at_least: int, seconds: float) -> int:
    """Wait until the live loss chart holds at least `at_least` points; returns how many it holds."""
    page.wait_for_function(f"() => ({CURVE_POINTS_JS})() >= {at_least}", timeout=seconds * 1000)
    return page.evaluate(CURVE_POINTS_JS)


def test_finetune_run_live_stop_and_download(server):
    from playwright.sync_api import expect, sync_playwright

    url, cache = server
    student = _student_ref()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.get_by_text("Quick start").first.wait_for()  # st.navigation is set up: use its sidebar
        _settle(page)
        _open_finetune(page)
        page.get_by_text("No runs yet").first.wait_for()
        _no_errors(page)
        expect(page.locator("[data-testid='stTextInput']").filter(has_text="Student").locator("input")) \
            .to_have_value(student)

        # task:arith:train at batch 4 for the default 3 epochs (750 steps: long enough never to finish before
        # it is stopped, even on a fast machine), eval on 4 records every 5 steps
        for label, value in (("Micro-batch", 4), ("Batch", 4), ("Eval limit", 4),
                             ("Eval every N steps", 5), ("Max new tokens", 16)):
            _set_number(page, label, value)
        _no_errors(page)
        page.get_by_role("button", name="Launch").click()
        page.get_by_text("Queued 1 run(s)").first.wait_for()
        _settle(page)
        _no_errors(page)

        first = _wait_points(page, 2, 120)
        progress = page.locator("[data-testid='stProgress']").first
        expect(progress).to_contain_text("step")
        step_text = progress.inner_text()
        _shot(page, "6_finetune_live_1")
        second = _wait_points(page, first + 3, 90)
        _shot(page, "6_finetune_live_2")
        assert second > first
        expect(progress).not_to_have_text(step_text)  # the progress bar moves with the chart

        # a browser reload finds the running run again on disk and keeps drawing it
        page.reload()
        _reloaded(page)
        _wait_points(page, second, 60)
        _no_errors(page)

        page.get_by_role("button", name="Stop", exact=True).first.click()
        page.get_by_text("the adapter trained so far was saved").first.wait_for(timeout=120_000)
        _settle(page)
        _no_errors(page)
        table = page.locator("[data-testid='stDataFrame']").first.inner_text()
        assert "stopped" in table or page.get_by_text("stopped", exact=True).count() > 0
        with page.expect_download() as info:
            page.get_by_role("button", name="Download adapter (zip)").click()
        names = zipfile.ZipFile(io.BytesIO(Path(info.value.path()).read_bytes())).namelist()
        assert "adapter/adapter_config.json" in names and "adapter/adapter_model.safetensors" in names
        _shot(page, "6_finetune_stopped")
        browser.close()

    runs = [d for d in (cache / "runs").iterdir() if (d / "spec.json").is_file()]
    assert len(runs) == 1
    status = json.loads((runs[0] / "status.json").read_text())
    assert status["state"] == "stopped" and 0 < status["step"] < status["max_steps"]
