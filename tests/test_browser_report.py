"""A report downloaded from the running app opens offline: `streamlit run app.py` + Playwright on
Debian's Chromium. Quick start, then the Sensitivity page's "Download report"; the file is opened
in a fresh browser context with the network off and every request that is not a file aborted, and
every chart the page showed must be drawn. Where plotly's image export works, a chart's PNG is
downloaded too. Skips when Chromium or Playwright is missing.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_browser import CHROMIUM, TIMEOUT_MS, _goto, _no_errors, _quick_start, _settle, server  # noqa: F401 - server: the fixture
from test_htmlreport import open_offline

from paraknow.htmlreport import image_export_unavailable

pytestmark = pytest.mark.browser  # a real browser: run with -m browser, left out of the fast lane


def test_downloaded_report_draws_every_chart_offline(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, _ = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        _quick_start(page)
        _goto(page, "Sensitivity", "Layers × modules")
        _no_errors(page)
        button = page.get_by_role("button", name=re.compile(r"Download report \(\d+ charts\)"))
        shown = int(re.search(r"\((\d+) charts", button.inner_text()).group(1))
        assert shown == 4  # the grid, the layer scores, the attention/FFN share, the drilled-down matrix
        page.wait_for_function(  # the page draws as many charts as the report packs
            f"document.querySelectorAll(\"[data-testid='stMain'] .js-plotly-plot\").length == {shown}")
        with page.expect_download() as info:
            button.click()
        report = tmp_path / info.value.suggested_filename
        info.value.save_as(report)
        assert report.name.startswith("paraknow-sensitivity-") and report.suffix == ".html"

        if image_export_unavailable() is None:
            with page.expect_download(timeout=TIMEOUT_MS) as image:
                page.get_by_role("button", name="PNG").click()
            assert Path(image.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        view = open_offline(browser, report, shown, tmp_path / "report.png")
        assert view.get_by_text("task:arith:seed").count() >= 1 and view.get_by_text("demo:teacher").count() >= 1
        browser.close()
