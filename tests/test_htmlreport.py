"""paraknow.htmlreport: one offline HTML file that draws every chart in headless Chromium with the
network blocked, and PNG/SVG export through kaleido + Debian's Chromium (skipped without them)."""
from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from paraknow import __version__, viz
from paraknow.core.errors import ParaknowError
from paraknow.htmlreport import (ReportFigure, figure_image, image_export_unavailable, report_provenance,
    write_html_report)

CHROMIUM = "/usr/bin/chromium"


def _figures() -> list[ReportFigure]:
    return [ReportFigure("Layer scores", viz.layer_bars([0.1, 0.4, 0.2, 0.3])),
            ReportFigure("Attention / FFN", viz.group_share_figure({"attn": 0.3, "ffn": 0.6, "embed": 0.1})),
            ReportFigure("Layer <similarity>", viz.similarity_heatmap(np.eye(4, 2), [0, 3]))]


def _linked(text: str) -> list[str]:
    """src/href attributes of the document's tags (script bodies are not parsed as tags)."""
    found = []

    class Links(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(v for k, v in attrs if k in ("src", "href") and v)

    Links().feed(text)
    return found


def _report(tmp_path) -> Path:
    return write_html_report(tmp_path / "report.html", "Sensitivity report", _figures(),
                             settings={"metric": "taylor-abs", "samples": 32, "note": "<b>bold</b>"},
                             models={"teacher": "demo:teacher", "student": "demo:student"}, source="test")


def test_report_is_one_self_contained_file(tmp_path):
    path = _report(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    text = path.read_text(encoding="utf-8")
    assert _linked(text) == []  # plotly.js is inlined: no script, style or image is fetched
    assert text.count("Plotly.newPlot(") >= 3 and "&lt;b&gt;bold&lt;/b&gt;" in text and "<b>bold</b>" not in text
    assert "Layer &lt;similarity&gt;" in text and "demo:teacher" in text and f"paraknow {__version__}" in text
    prov = report_provenance("test")
    assert prov["paraknow"] == __version__ and prov["date"][:4].isdigit() and prov["command"] == "test"
    if prov["commit"]:
        assert prov["commit"][:12] in text
    with pytest.raises(ParaknowError, match="at least one chart"):
        write_html_report(tmp_path / "empty.html", "x", [], {}, {})
    assert not (tmp_path / "empty.html").exists()


def open_offline(browser, path: Path, n_charts: int, screenshot: Path):
    """Open a report file in a fresh context with the network off and every non-file request
    aborted; check that each of its `n_charts` charts drew an svg with data in it. Returns the page."""
    asked, errors = [], []

    def only_files(route):
        asked.append(route.request.url)
        return route.continue_() if route.request.url.startswith("file:") else route.abort()

    context = browser.new_context(viewport={"width": 1300, "height": 900}, offline=True)
    context.route("**/*", only_files)
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(path.as_uri())
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {n_charts}",
                           timeout=120_000)
    assert page.locator("div.plot-container.plotly").count() == n_charts
    assert page.locator(".js-plotly-plot").count() == n_charts
    for i in range(n_charts):  # every chart drew its svg with something in it
        chart = page.locator(f"#pk-chart-{i}")
        assert chart.locator("svg.main-svg").count() >= 1
        assert chart.locator(".trace, .hm, image").count() >= 1
    page.screenshot(path=str(screenshot), full_page=True)
    assert not errors, errors
    assert asked and all(url.startswith("file:") for url in asked)  # nothing else was even needed
    return page


@pytest.mark.browser  # Playwright drives Chromium
def test_report_draws_every_chart_offline_in_chromium(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    path = _report(tmp_path)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        page = open_offline(browser, path, len(_figures()), tmp_path / "report.png")
        assert page.locator("table.pk-table").count() == 3  # models, settings, provenance
        browser.close()


@pytest.mark.slow  # kaleido starts Chromium for each image (skipped without it)
def test_images_png_and_svg():
    reason = image_export_unavailable()
    if reason:
        pytest.skip(f"image export unavailable here: {reason}")
    figure = viz.layer_bars([0.1, 0.4, 0.2])
    assert figure_image(figure, "png")[:8] == b"\x89PNG\r\n\x1a\n"
    svg = figure_image(figure, "svg").decode("utf-8")
    assert svg.lstrip().startswith("<svg") and "main-svg" in svg
    with pytest.raises(ParaknowError, match="unknown image format"):
        figure_image(figure, "gif")


def test_image_export_explains_why_it_is_unavailable(monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chrome")
    assert "BROWSER_PATH names /nonexistent/chrome" in image_export_unavailable()
    with pytest.raises(ParaknowError, match="HTML report instead"):
        figure_image(viz.layer_bars([1.0]), "png")
