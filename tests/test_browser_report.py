"""A report downloaded from the running app opens offline: `streamlit run app.py` + Playwright on
Debian's Chromium. Quick start, then the Sensitivity page's "Download report"; the file is opened
in a fresh browser context with the network off and every request that is not a file aborted, and
every chart the page showed must be drawn. Where plotly's image export works, a chart's PNG is
downloaded too. Skips when Chromium or Playwright is missing.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from paraknow.htmlreport import image_export_unavailable
from test_browser import CHROMIUM, TIMEOUT_MS, _goto, _no_errors, _settle, streamlit_app


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    env = dict(os.environ)
    env["PARAKNOW_CACHE"] = str(tmp_path_factory.mktemp("report-cache"))
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    with streamlit_app(env) as url:
        yield url


def test_downloaded_report_draws_every_chart_offline(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server)
        page.get_by_role("button", name="Quick start on the demo pair").click()
        page.get_by_text("Quick start done").first.wait_for()
        _settle(page)
        _goto(page, "Sensitivity", "Layers × modules")
        _no_errors(page)
        shown = page.locator("[data-testid='stMain'] .js-plotly-plot").count()
        button = page.get_by_role("button", name=f"Download report ({shown} charts)")
        with page.expect_download() as info:
            button.click()
        report = tmp_path / info.value.suggested_filename
        info.value.save_as(report)
        assert report.name.startswith("paraknow-sensitivity-") and report.suffix == ".html"

        if image_export_unavailable() is None:
            with page.expect_download(timeout=TIMEOUT_MS) as image:
                page.get_by_role("button", name="PNG").click()
            assert Path(image.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        asked = []

        def only_files(route):
            asked.append(route.request.url)
            return route.continue_() if route.request.url.startswith("file:") else route.abort()

        offline = browser.new_context(viewport={"width": 1300, "height": 900}, offline=True)
        offline.route("**/*", only_files)
        view = offline.new_page()
        errors = []
        view.on("pageerror", lambda exc: errors.append(str(exc)))
        view.goto(report.as_uri())
        view.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {shown}",
                               timeout=120_000)
        assert view.locator(".js-plotly-plot").count() == shown
        assert view.locator("div.plot-container.plotly").count() == shown
        for chart in view.locator(".js-plotly-plot").all():
            assert chart.locator("svg.main-svg").count() >= 1 and chart.locator(".trace, .hm, image").count() >= 1
        assert view.get_by_text("task:arith:seed").count() >= 1 and view.get_by_text("demo:teacher").count() >= 1
        view.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert all(url.startswith("file:") for url in asked)
