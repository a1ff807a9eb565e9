"""A crafted link, in a real browser: markdown in a model reference, a local path and a hub id are
shown as text, nothing from the link is clickable, and nothing is loaded before the one click.

Shares test_browser's server (its own cache folder); waits for conditions, never a fixed sleep.
"""
from __future__ import annotations

from urllib.parse import urlencode, urlparse

import pytest

from test_browser import CHROMIUM, TIMEOUT_MS, _settle, server  # noqa: F401

pytestmark = pytest.mark.browser  # a real browser: run with -m browser, left out of the fast lane

PHISH = "[Click here to repair your session](https://evil.example/phish)"


def test_a_crafted_link_shows_text_only_and_loads_nothing_before_the_click(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, _ = server
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"text": "hello"}\n')
    query = {"teacher": PHISH, "student": "HuggingFaceTB/SmolLM2-135M-Instruct", "data": str(seeds)}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        requests = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(f"{url}/?{urlencode(query)}")
        page.get_by_text("This link asks to load the following").first.wait_for()
        _settle(page)
        sidebar = page.locator("[data-testid='stSidebar']")
        shown = sidebar.inner_text()
        assert f"teacher: {PHISH}" in shown and str(seeds) in shown  # the link's values, as typed
        assert "HuggingFaceTB/SmolLM2-135M-Instruct" in shown
        assert "teacher: not loaded" in shown and "student: not loaded" in shown  # nothing loaded yet
        assert page.locator("a[href*='evil.example']").count() == 0  # nothing clickable from the link
        page.get_by_role("button", name="Load them").click()
        page.get_by_text("could not be used").first.wait_for()
        _settle(page)
        links = page.locator("a[href*='evil.example']")
        assert links.count() == 0, [links.nth(i).evaluate("a => a.closest('[data-testid]').outerHTML.slice(0, 600)")
                                    for i in range(links.count())]  # the notice quotes it as text
        assert PHISH in sidebar.inner_text().replace("\u200b", "")  # reads as typed (a zero-width space breaks the autolink)
        assert "evil.example" not in {urlparse(u).hostname for u in requests}  # the browser never went there
        browser.close()
