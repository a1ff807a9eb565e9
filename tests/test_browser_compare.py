"""The Mapping page's granularity comparison in a real browser: `streamlit run app.py` + Playwright on
Debian's Chromium. Quick start, Mapping, run the comparison, see every structure x layer strategy x coherent
row for the session's map, click one row: the widgets and the plan follow it. Screenshots go where
tests/test_browser.py puts them (5_mapping_compare*.png). Skips when Chromium or Playwright is missing.
"""
from __future__ import annotations

import pytest
from test_browser import CHROMIUM, TIMEOUT_MS, _goto, _no_errors, _quick_start, _settle, _shot, server  # noqa: F401 - fixture

from paraknow.transfer.compare import combinations

pytestmark = pytest.mark.browser  # a real browser: run with -m browser, left out of the fast lane

ROW_PX = 35  # the data grid's row height (the header is one row too)


def test_compare_and_adopt_a_row(server):
    from playwright.sync_api import expect, sync_playwright

    url, _ = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        _quick_start(page)
        _goto(page, "Mapping", "Selection preview")
        page.get_by_role("button", name="Compare every structure and layer strategy").click()
        grid = page.locator("[data-testid='stDataFrame']").filter(has_text="◀ current")  # cells: a hidden grid
        grid.wait_for()
        _settle(page)
        _no_errors(page)
        expect(grid).to_have_count(1)
        grid.scroll_into_view_if_needed()
        _shot(page, "5_mapping_compare")
        rows = combinations()
        pick = rows.index(("submatrix", "first", "layer"))
        assert pick < 10  # on screen without scrolling the grid
        grid.scroll_into_view_if_needed()  # the screenshot resized the viewport
        box = grid.bounding_box()
        page.mouse.click(box["x"] + 12, box["y"] + ROW_PX * (pick + 1) + ROW_PX / 2)  # its row-selection marker
        strategy = page.locator("[data-testid='stSelectbox']").filter(has_text="Layer strategy").first.locator("input")
        expect(strategy).to_have_value("first", timeout=TIMEOUT_MS)
        page.get_by_text("coherent layer:").first.wait_for()
        _settle(page)
        _no_errors(page)
        _shot(page, "5_mapping_compare_adopted")
        browser.close()
