"""Nothing lost, in a real browser: a sensitivity map started on the demo pair survives clicks,
widget toggles and a reload, and the link in the address bar opens the same state elsewhere.

Shares test_browser's server (its own cache folder) and waits only for conditions: a button, a
text, the app's script state; never a fixed sleep.
"""
from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

import pytest
from test_browser import CHROMIUM, SHOTS, TIMEOUT_MS, _goto, _no_errors, _quick_start, _settle, _shot, server  # noqa: F401

pytestmark = pytest.mark.browser  # a real browser: run with -m browser, left out of the fast lane

SAMPLES = 160  # enough seed samples that the map takes a while, so the clicks land while it runs
SPLIT = "train"


def _launch(pw):
    return pw.chromium.launch(executable_path=CHROMIUM, args=[
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])


def _select(page, label: str, option: str) -> None:
    box = page.locator("[data-testid='stSelectbox']").filter(has_text=label).first
    box.click()
    page.get_by_role("option", name=option, exact=True).click()
    _settle(page)


def _map_caption(samples: int, split: str):
    return f"task:arith:{split} · {samples} samples"


def test_a_map_survives_clicks_and_a_reload_and_the_link_restores_it(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, cache = server
    with sync_playwright() as pw:
        browser = _launch(pw)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        _quick_start(page)

        _goto(page, "Sensitivity", "Layers × modules")
        _select(page, "Split", SPLIT)
        samples = page.get_by_role("spinbutton", name="Seed samples")
        samples.fill(str(SAMPLES))
        samples.press("Enter")
        _settle(page)
        page.get_by_role("button", name="Compute sensitivity").click()
        cancel = page.get_by_role("button", name="Cancel")
        cancel.wait_for()  # the map is computing in the background
        expect(page.get_by_text(f"Sensitivity on task:arith:{SPLIT}").first).to_be_visible()

        # clicks and toggles while it runs: the old map's view changes, the job goes on
        page.get_by_text("Log scale").first.click()
        _settle(page)
        page.get_by_text("Max pooling").first.click()
        _settle(page)
        _select(page, "Module", "down_proj")
        _goto(page, "Mapping", "Selection preview")
        _goto(page, "Sensitivity", "Layers × modules")
        _shot(page, "reload_1_running")
        assert cancel.count() == 1 or page.get_by_text(_map_caption(SAMPLES, SPLIT)).count() >= 1

        page.reload()  # a new browser session: the URL holds the state, the job is found by its content
        page.get_by_text(_map_caption(SAMPLES, SPLIT)).first.wait_for()  # waits through the rest of the job
        _settle(page)
        _no_errors(page)
        expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
        _shot(page, "reload_2_done")
        link = page.url
        query = parse_qs(urlparse(link).query)
        assert query["data"] == [f"task:arith:{SPLIT}"] and query["samples"] == [str(SAMPLES)]
        assert query["teacher"] == ["demo:teacher"] and query["student"] == ["demo:student"]

        fresh = browser.new_context(viewport={"width": 1440, "height": 1000})  # no cookies, no session
        other = fresh.new_page()
        other.set_default_timeout(TIMEOUT_MS)
        other.goto(link)
        other.get_by_text(_map_caption(SAMPLES, SPLIT)).first.wait_for()
        _settle(other)
        _no_errors(other)
        expect(other.get_by_text("from the cache").first).to_be_visible()  # no second computation
        sidebar = other.locator("[data-testid='stSidebar']")
        expect(sidebar.get_by_text("sensitivity: task:arith:train").first).to_be_visible()
        _goto(other, "Mapping", "Selection preview")  # the plan is there too
        _no_errors(other)
        _shot(other, "reload_3_link")

        # the same state as a recipe file: downloaded here, loaded into a session opened without a link
        other.locator("[data-testid='stSidebar']").get_by_text("Session recipe").click()
        with other.expect_download() as info:
            other.get_by_role("button", name="Download recipe").click()
        saved = tmp_path / "paraknow-recipe.json"  # the uploader takes .json files only
        info.value.save_as(saved)
        recipe = json.loads(saved.read_text())
        assert recipe["data"] == f"task:arith:{SPLIT}" and recipe["samples"] == SAMPLES
        assert recipe["teacher"] == "demo:teacher" and recipe["layers"] == "sensitivity"
        bare = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
        bare.set_default_timeout(TIMEOUT_MS)
        bare.goto(url + "/Sensitivity")
        bare.get_by_text("Load a teacher and a student first").first.wait_for()
        _settle(bare)
        bare.locator("[data-testid='stSidebar']").get_by_text("Session recipe").click()
        bare.locator("[data-testid='stSidebar'] input[type='file']").set_input_files(saved)
        bare.get_by_text(_map_caption(SAMPLES, SPLIT)).first.wait_for()
        _settle(bare)
        _no_errors(bare)
        assert parse_qs(urlparse(bare.url).query)["samples"] == [str(SAMPLES)]  # and the link follows
        browser.close()
    maps = list((cache / "sensitivity").glob("*.safetensors"))
    assert len(maps) == 2  # the quick start's and the 160-sample map, each computed once
