"""Reports that leave the app: one self-contained HTML file, and charts as PNG/SVG images.

`write_html_report` writes ONE file holding interactive plotly charts (plotly.js inlined once,
with the first chart), a table of the settings, the model references and the provenance
(paraknow version, git commit, UTC date, machine: `paraknow.core.provenance.provenance`). It opens in
any browser with no network. `figure_image` renders one chart as PNG or SVG through plotly's
static export (kaleido >= 1, which drives a system Chrome/Chromium: Debian's /usr/bin/chromium
is found on PATH, or name one in BROWSER_PATH); `image_export_unavailable` says why it cannot
when it cannot, so the app can say so and point to the HTML report.
"""
from __future__ import annotations

import html
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go

from .core import __version__
from .core.errors import ParaknowError, first_line
from .core.fsio import atomic_write_text

IMAGE_FORMATS = ("png", "svg")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
IMAGE_WIDTH = 1100  # px of a static image whose figure has no width of its own
PNG_SCALE = 2  # PNG pixels per CSS pixel (sharp on slides)
MIN_MARGIN_PX = 60  # left and bottom margins of a chart in a report: room for the axis labels


@dataclass
class ReportFigure:
    """One chart of a report, with the heading it is shown under."""
    title: str
    figure: object  # plotly.graph_objects.Figure


def report_provenance(source: str) -> dict:
    """paraknow version, git commit, date and machine of a report written now from `source`."""
    from .core.provenance import provenance

    return {"paraknow": __version__, **provenance(source)}


def _value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _table(rows: dict) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_value(v))}</td></tr>"
                   for k, v in rows.items())
    return f'<table class="pk-table">{body}</table>'


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; }
.pk-table { border-collapse: collapse; margin: .5rem 0 1rem; }
.pk-table th, .pk-table td { text-align: left; padding: .25rem .8rem; border-bottom: 1px solid #eee;
  vertical-align: top; font-size: .9rem; }
.pk-table th { color: #555; font-weight: 600; white-space: nowrap; }
.pk-meta { color: #666; font-size: .9rem; }
"""


def report_html(title: str, figures: list[ReportFigure], settings: dict, models: dict,
                source: str = "paraknow") -> str:
    """The whole report as one HTML document (plotly.js inlined with the first chart)."""
    prov = report_provenance(source)
    charts = []
    for i, item in enumerate(figures):
        figure = go.Figure(item.figure)  # a copy: the app's margins are too tight for a page of its own
        margin = figure.layout.margin
        figure.update_layout(margin=dict(l=max(margin.l or 0, MIN_MARGIN_PX), b=max(margin.b or 0, MIN_MARGIN_PX)))
        div = figure.to_html(full_html=False, include_plotlyjs=(i == 0), include_mathjax=False,
                                  div_id=f"pk-chart-{i}", config={"displaylogo": False, "responsive": True})
        charts.append(f"<h2>{html.escape(item.title)}</h2>\n{div}")
    commit = prov.get("commit")
    made = (f"paraknow {__version__} · {prov['date']} · commit "
            f"{commit[:12] + (' (with uncommitted changes)' if prov.get('dirty') else '') if commit else 'unknown'}")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>", f'<p class="pk-meta">{html.escape(made)}</p>',
        "<h2>Models</h2>", _table(models or {"models": "none loaded"}),
        "<h2>Settings</h2>", _table(settings or {"settings": "none"}),
        *charts,
        "<h2>Provenance</h2>", _table(prov),
        "</body></html>", ""])


def write_html_report(path, title: str, figures: list[ReportFigure], settings: dict, models: dict,
                      source: str = "paraknow") -> Path:
    """Write the report to `path` atomically (a half-written file never appears)."""
    if not figures:
        raise ParaknowError("a report needs at least one chart: compute something on the page first.")
    path = Path(path)
    atomic_write_text(path, report_html(title, figures, settings, models, source))
    return path


# ---------------------------------------------------------------------------------------
# Static images


def image_export_unavailable() -> str | None:
    """None when charts can be exported as PNG/SVG here, else the reason in one line."""
    if importlib.util.find_spec("kaleido") is None:
        return ("plotly's image export needs kaleido (pip install -r requirements-images.txt) and a "
                "Chrome or Chromium")
    browser = os.environ.get("BROWSER_PATH")
    if browser and not Path(browser).is_file():
        return f"BROWSER_PATH names {browser}, which does not exist"
    if not browser and not any(shutil.which(name) for name in BROWSERS):
        return "plotly's image export (kaleido) needs Chrome or Chromium: apt-get install chromium, or set BROWSER_PATH"
    return None


def figure_image(figure, fmt: str = "png") -> bytes:
    """The figure as PNG or SVG bytes (plotly static export through kaleido and Chromium)."""
    if fmt not in IMAGE_FORMATS:
        raise ParaknowError(f"unknown image format '{fmt}'; use one of {', '.join(IMAGE_FORMATS)}.")
    reason = image_export_unavailable()
    if reason:
        raise ParaknowError(f"image export is unavailable: {reason}. Download the HTML report instead.")
    try:
        return figure.to_image(format=fmt, width=figure.layout.width or IMAGE_WIDTH,
                               scale=PNG_SCALE if fmt == "png" else 1)
    except Exception as exc:  # noqa: BLE001 - kaleido and the browser raise many kinds of errors
        raise ParaknowError(f"image export failed ({type(exc).__name__}: {first_line(exc)}); "
                            "download the HTML report instead.") from None
