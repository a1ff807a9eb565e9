"""Page 6 (Fine-tune) in a real browser: `streamlit run app.py` + Playwright on Debian's Chromium.

Launches a real run of the demo student from the page (task:arith:train at batch 4, 750 steps,
evaluating 4 test records every 5 steps), watches the live chart grow, reloads the browser (the run
is found again on disk), stops the run from the page, sees `stopped` and downloads the adapter.
Screenshots go to docs/screenshots/6_*.png. Skips when Chromium, Playwright or the demo pair is
missing; PARAKNOW_APP_STUDENT may name another (small, local) student instead of demo:student.

The server/browser helpers are shared with tests/test_browser.py (imported from it).
"""
from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path

import pytest

from test_browser import CHROMIUM, _settle, _shot, streamlit_app

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


def _open_finetune(page) -> None:
    page.locator("[data-testid='stSidebarNav']").get_by_text("Fine-tune", exact=True).click()
    page.get_by_role("heading", name="Fine-tune").first.wait_for()
    _settle(page)


def _dismiss_page_not_found(page) -> None:
    """Streamlit shows a spurious "Page not found" dialog when a page of an st.navigation app is opened
    by its URL while a `pages/` folder exists (legacy page discovery); the right page still runs."""
    page.get_by_role("heading", name="Fine-tune").first.wait_for()
    page.wait_for_timeout(1000)
    dialog = page.get_by_text("Page not found")
    if dialog.count():
        page.keyboard.press("Escape")
        dialog.first.wait_for(state="detached")


def _set_number(page, label: str, value) -> None:
    box = page.locator("[data-testid='stNumberInput']").filter(has_text=label).first.locator("input")
    box.fill(str(value))
    box.press("Enter")
    _settle(page)


def _no_errors(page) -> None:
    errors = page.locator("[data-testid='stException'], [data-testid='stAlertContentError']")
    assert errors.count() == 0, errors.first.inner_text()


def _wait_value(fn, predicate, seconds: float, what: str):
    deadline = time.time() + seconds
    value = fn()
    while not predicate(value):
        if time.time() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what} (last value {value!r})")
        time.sleep(0.5)
        value = fn()
    return value


def test_finetune_run_live_stop_and_download(server):
    from playwright.sync_api import sync_playwright

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
        _settle(page)
        _no_errors(page)
        assert page.locator("[data-testid='stTextInput']").filter(has_text="Student").locator("input").input_value() \
            == student

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

        points = lambda: page.evaluate(CURVE_POINTS_JS)  # noqa: E731
        first = _wait_value(points, lambda n: n >= 2, 120, "the first points of the live chart")
        page.wait_for_timeout(1500)
        step_text = page.locator("[data-testid='stProgress']").first.inner_text()
        _shot(page, "6_finetune_live_1")
        second = _wait_value(points, lambda n: n > first + 2, 90, "the live chart to grow")
        _shot(page, "6_finetune_live_2")
        assert second > first
        assert page.locator("[data-testid='stProgress']").first.inner_text() != step_text

        # a browser reload finds the running run again on disk and keeps drawing it
        page.reload()
        _dismiss_page_not_found(page)
        _wait_value(points, lambda n: n >= second, 60, "the chart after a reload")
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
    import json

    status = json.loads((runs[0] / "status.json").read_text())
    assert status["state"] == "stopped" and 0 < status["step"] < status["max_steps"]
