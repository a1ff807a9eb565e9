"""A study's outputs: results.json, results.csv (one row per cell), the per-arm text table the
CLI prints, and report.html (offline: plotly's JavaScript inlined)."""
from __future__ import annotations

import csv
import html
import io
from pathlib import Path

from ..fsio import atomic_write_json, atomic_write_text
from .plan import plan_cells
from .recipe import Recipe
from .results import summarize
from .signals import SIGNALS

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
REPORT_HTML = "report.html"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _interval(ci) -> str:
    return "-" if not ci else f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def collect(recipe: Recipe, out) -> dict:
    """results.json's content from the cells on disk (finished or not)."""
    from .runner import read_cell

    out = Path(out)
    return summarize(recipe, out, {c.cell_id: read_cell(out, c) for c in plan_cells(recipe)})


def cells_csv(results: dict) -> str:
    buffer = io.StringIO()
    rows = results["cells"]
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["arm"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def arm_rows(results: dict) -> list[dict]:
    """One display row per arm (accuracies in percent)."""
    return [{"arm": a["arm"], "init": a["init"], "n": a["n"], "accuracy %": _pct(a["mean"]),
             "95 % CI": _interval(a["ci95"]),
             "vs baseline": "-" if a["diff_vs_baseline"] is None else f"{100 * a['diff_vs_baseline']:+.1f}",
             "verdict": a["verdict"]} for a in results["arms"]]


def format_table(results: dict) -> str:
    """The per-arm table as aligned text (what the CLI prints on stdout)."""
    rows = arm_rows(results)
    if not rows:
        return ""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def bars_figure(results: dict):
    """Mean test accuracy per arm with 95 % CI error bars; the baseline's mean as a dotted line."""
    import plotly.graph_objects as go

    arms = [a for a in results["arms"] if a["mean"] is not None]
    names = [a["arm"] for a in arms]
    means = [100 * a["mean"] for a in arms]
    upper = [100 * (a["ci95"][1] - a["mean"]) if a["ci95"] else 0 for a in arms]
    lower = [100 * (a["mean"] - a["ci95"][0]) if a["ci95"] else 0 for a in arms]
    fig = go.Figure(go.Bar(x=names, y=means, error_y={"type": "data", "symmetric": False, "array": upper,
                                                       "arrayminus": lower},
                           text=[f"{m:.1f}" for m in means], textposition="outside",
                           hovertext=[a["verdict"] for a in arms], name="test accuracy"))
    base = next((a for a in arms if a["arm"] == results["baseline"]), None)
    if base is not None:
        fig.add_hline(y=100 * base["mean"], line_dash="dot", annotation_text=f"baseline {base['arm']}")
    fig.update_layout(yaxis_title="test accuracy (%), mean and 95 % CI over seeds", xaxis_title="arm",
                      yaxis_rangemode="tozero", margin={"t": 40}, height=460)
    return fig


def seed_count_points(recipe: Recipe, results: dict) -> list[dict]:
    """The paper's seed-count figure: PKT arms that differ from the default extraction only in the
    number of seed samples, as {"samples", "arm", "mean", "ci95"} sorted by samples ([] when fewer
    than two such arms have results)."""
    from ..sensitivity import SensitivityConfig

    by_name = {a["arm"]: a for a in results["arms"]}
    points = []
    for arm in recipe.arms:
        if arm.init == "pkt" and set(arm.extract) <= {"samples"} and not arm.train and not arm.lr_sweep:
            row = by_name[arm.name]
            if row["mean"] is not None:
                samples = arm.extract.get("samples", SensitivityConfig().samples)
                points.append({"samples": samples, "arm": arm.name, "mean": row["mean"], "ci95": row["ci95"]})
    points.sort(key=lambda p: p["samples"])
    return points if len({p["samples"] for p in points}) >= 2 else []


def seed_count_figure(points: list[dict], results: dict):
    """Mean test accuracy against the number of seed samples (log axis), 95 % CI error bars, the
    baseline as a dotted line."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(
        x=[p["samples"] for p in points], y=[100 * p["mean"] for p in points], mode="lines+markers",
        text=[p["arm"] for p in points], name="PKT",
        error_y={"type": "data", "symmetric": False,
                 "array": [100 * (p["ci95"][1] - p["mean"]) if p["ci95"] else 0 for p in points],
                 "arrayminus": [100 * (p["mean"] - p["ci95"][0]) if p["ci95"] else 0 for p in points]}))
    base = next((a for a in results["arms"] if a["arm"] == results["baseline"] and a["mean"] is not None), None)
    if base is not None:
        fig.add_hline(y=100 * base["mean"], line_dash="dot", annotation_text=f"baseline {base['arm']}")
    fig.update_layout(xaxis_type="log", xaxis_title="seed samples for the sensitivity (log scale)",
                      yaxis_title="test accuracy (%)", margin={"t": 40}, height=380)
    return fig


def _html_table(rows: list[dict]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def report_html(recipe: Recipe, results: dict) -> str:
    """A self-contained page: the verdict table, the bar chart, the signals and their correlations."""
    figure = bars_figure(results).to_html(full_html=False, include_plotlyjs=True)
    points = seed_count_points(recipe, results)
    seed_curve = "" if not points else ("<h2>Number of seed samples</h2>" + seed_count_figure(
        points, results).to_html(full_html=False, include_plotlyjs=False))
    signals = [{"arm": a["arm"], **{s: _fmt(a["signals"].get(s)) for s in SIGNALS}}
               for a in results["arms"] if a["signals"]]
    correlations = [{"signal": s, "arms": c["n"], "Spearman vs accuracy": _fmt(c["spearman"])}
                    for s, c in results["signal_correlations"].items()]
    timing = results.get("timing") or {}
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>paraknow study</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head><body>
<h1>paraknow study</h1>
<p>Student <code>{html.escape(recipe.student)}</code>, teacher <code>{html.escape(str(recipe.teacher))}</code>,
trained on <code>{html.escape(recipe.train_data)}</code>, learning rates chosen on
<code>{html.escape(recipe.val_data)}</code>, tested on <code>{html.escape(recipe.test_data)}</code>;
seeds {html.escape(str(recipe.seeds))}; baseline <b>{html.escape(results['baseline'])}</b>.
{f"Estimated {timing['estimate_s'] / 60:.1f} min, took {timing['wall_s'] / 60:.1f} min." if timing else ""}</p>
<h2>Test accuracy per arm</h2>{_html_table(arm_rows(results))}
{figure}
{seed_curve}
<h2>Cheap signals (before training)</h2>{_html_table(signals)}
<h2>Rank correlation of each signal with the final accuracy across arms</h2>{_html_table(correlations)}
</body></html>
"""


def write_outputs(recipe: Recipe, out, timing: dict | None = None, with_html: bool = True) -> dict:
    """Collect the cells on disk and write results.json, results.csv (and report.html)."""
    out = Path(out)
    results = collect(recipe, out)
    if timing:
        results["timing"] = timing
    atomic_write_json(out / RESULTS_JSON, results)
    atomic_write_text(out / RESULTS_CSV, cells_csv(results))
    if with_html:
        atomic_write_text(out / REPORT_HTML, report_html(recipe, results))
    return results
