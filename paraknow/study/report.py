"""A study's outputs: results.json, results.csv (one row per cell), the per-arm text table the
CLI prints, and report.html (offline: plotly's JavaScript inlined)."""
from __future__ import annotations

import csv
import html
import io
from pathlib import Path

from ..core.fsio import atomic_write_json, atomic_write_text
from .compare import signed_interval, signed_points
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
    from .cells import read_cell

    out = Path(out)
    return summarize(recipe, out, {c.cell_id: read_cell(out, c) for c in plan_cells(recipe)})


def cells_csv(results: dict) -> str:
    """One row per cell; a nested object (the cell's `cost`) becomes its own columns."""
    buffer = io.StringIO()
    rows = [{k: v for key, value in row.items() for k, v in (value.items() if isinstance(value, dict) else
                                                              [(key, value)])} for row in results["cells"]]
    fields = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(buffer, fieldnames=fields or ["arm"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


NUMBER_FIELDS = ("lr", "test_accuracy", "test_loss", "val_accuracy", "val_loss", "seconds")


def records_from_csv(text: str) -> dict:
    """{cell_id: record} read back from a results.csv (cells_csv's inverse: empty is None, seeds
    integers, the numbers floats): what a study's analysis needs when only its CSV was kept."""
    from .plan import Cell

    records = {}
    for row in csv.DictReader(io.StringIO(text)):
        record = {k: (v if v != "" else None) for k, v in row.items()}
        record["seed"] = None if record["seed"] is None else int(record["seed"])
        for key in NUMBER_FIELDS:
            if record.get(key) is not None:
                record[key] = float(record[key])
        records[Cell(record["arm"], record["seed"], record["lr"]).cell_id] = record
    return records


SI_PREFIXES = ("", "k", "M", "G", "T", "P", "E")


def si(x: float, unit: str) -> str:
    """1.234e9, "FLOP" -> '1.23 GFLOP' (three significant digits)."""
    power = 0
    while abs(x) >= 1000 and power < len(SI_PREFIXES) - 1:
        x, power = x / 1000, power + 1
    return f"{x:.3g} {SI_PREFIXES[power]}{unit}"


def cost_text(cost: dict | None) -> str:
    """An arm's teacher cost in one cell: estimated FLOPs · tokens through the teacher · seconds in it
    ('none' for a teacher-free arm, '-' where no cost was recorded)."""
    if not cost or cost.get("teacher_flops") is None:
        return "-"
    if not cost["teacher_flops"] and not cost.get("teacher_tokens"):
        return "none"
    return (f"{si(cost['teacher_flops'], 'FLOP')} · {cost['teacher_tokens']:,.0f} tokens · "
            f"{cost['teacher_seconds'] or 0:.1f} s")


def arm_rows(results: dict) -> list[dict]:
    """One display row per arm (accuracies in percent; the teacher's cost and the training seconds are
    the means over the arm's chosen cells, see paraknow.study.cost)."""
    return [{"arm": a["arm"], "init": a["init"], "n": a["n"], "accuracy %": _pct(a["mean"]),
             "95 % CI": _interval(a["ci95"]),
             "vs baseline": "-" if a["diff_vs_baseline"] is None else f"{100 * a['diff_vs_baseline']:+.1f}",
             "teacher cost": cost_text(a.get("cost")),
             "train s": "-" if (a.get("cost") or {}).get("train_seconds") is None else
             f"{a['cost']['train_seconds']:.1f}", "verdict": a["verdict"]} for a in results["arms"]]


def comparison_rows(results: dict) -> list[dict]:
    """One display row per declared comparison (differences in accuracy points), the same in the
    CLI, the Study page and report.html."""
    correction = results.get("correction", "holm")
    sizes = {}
    for c in results.get("comparisons", []):
        sizes[c["family"]] = sizes.get(c["family"], 0) + 1
    return [{"family": f"{c['family']} (m = {sizes[c['family']]}, {correction})", "arm": c["arm"],
             "vs": c["reference"], "n": c["n"], "diff": signed_points(c["diff"]), "95 % CI": signed_interval(c["ci95"]),
             "p": _fmt(c["p"]), "p adjusted": _fmt(c["p_adjusted"]),
             "adjusted CI": signed_interval(c["ci95_adjusted"]),
             "bootstrap CI": signed_interval(c["bootstrap_ci95"]),
             "MDE 80 %": "-" if c["mde80"] is None else f"{100 * c['mde80']:.1f}",
             "verdict": c["verdict"], "reason": c["reason"]} for c in results.get("comparisons", [])]


def markdown_comparisons(results: dict) -> str:
    """The comparisons table in Markdown (docs/results quotes it)."""
    rows = comparison_rows(results)
    if not rows:
        return ""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(str(v) for v in r.values()) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def markdown_table(results: dict) -> str:
    """The per-arm table in Markdown, factor by factor (what the README quotes)."""
    lines = ["| factor | arm | seeds | test accuracy | 95 % CI | paired with the baseline |",
             "|---|---|---|---|---|---|"]
    for a in results["arms"]:
        lines.append(f"| {a.get('factor', '')} | `{a['arm']}` | {a['n']} | {_pct(a['mean'])} % | "
                     f"{_interval(a['ci95'])} | {a['verdict']} |")
    return "\n".join(lines) + "\n"


def _aligned(rows: list[dict]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def format_table(results: dict) -> str:
    """The per-arm table, then the comparisons, as aligned text (what the CLI prints on stdout)."""
    arms = _aligned(arm_rows(results))
    rows = comparison_rows(results)
    return arms if not rows else f"{arms}\n\ncomparisons (accuracy points):\n{_aligned(rows)}"


FACTOR_COLORS = ("#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#bcbd22", "#17becf")


def _factor_colors(arms: list[dict]) -> dict[str, str]:
    """One colour per factor group, in order of first appearance (Controls first in the recipes)."""
    groups = list(dict.fromkeys(a.get("factor", "") for a in arms))
    return {g: FACTOR_COLORS[i % len(FACTOR_COLORS)] for i, g in enumerate(groups)}


def bars_figure(results: dict):
    """Mean test accuracy per arm with 95 % CI error bars, one colour per factor (the paper's
    analyses one at a time), arms in recipe order; the baseline's mean as a dotted line."""
    import plotly.graph_objects as go

    arms = [a for a in results["arms"] if a["mean"] is not None]
    colors = _factor_colors(arms)
    fig = go.Figure()
    for group, color in colors.items():
        members = [a for a in arms if a.get("factor", "") == group]
        means = [100 * a["mean"] for a in members]
        fig.add_trace(go.Bar(
            x=[a["arm"] for a in members], y=means, name=group or "arms", marker_color=color,
            error_y={"type": "data", "symmetric": False,
                     "array": [100 * (a["ci95"][1] - a["mean"]) if a["ci95"] else 0 for a in members],
                     "arrayminus": [100 * (a["mean"] - a["ci95"][0]) if a["ci95"] else 0 for a in members]},
            text=[f"{m:.1f}" for m in means], textposition="outside", hovertext=[a["verdict"] for a in members]))
    base = next((a for a in arms if a["arm"] == results["baseline"]), None)
    if base is not None:
        fig.add_hline(y=100 * base["mean"], line_dash="dot", annotation_text=f"baseline {base['arm']}")
    fig.update_layout(yaxis_title="test accuracy (%), mean and 95 % CI over seeds", xaxis_title="arm",
                      xaxis={"categoryorder": "array", "categoryarray": [a["arm"] for a in arms]},
                      yaxis_rangemode="tozero", margin={"t": 40}, height=460, legend_title_text="factor")
    return fig


def cost_points(results: dict) -> list[dict]:
    """The arms with a recorded cost and a paired difference with the baseline (the baseline itself at
    0): {"arm", "factor", "flops", "tokens", "seconds", "train_seconds", "gain", "ci95"}, gains in
    accuracy fractions."""
    points = []
    for a in results["arms"]:
        cost, base = a.get("cost"), a["arm"] == results["baseline"]
        if cost and cost.get("teacher_flops") is not None and (base or a["diff_vs_baseline"] is not None):
            points.append({"arm": a["arm"], "factor": a.get("factor", ""), "flops": cost["teacher_flops"],
                           "tokens": cost["teacher_tokens"], "seconds": cost["teacher_seconds"],
                           "train_seconds": cost["train_seconds"], "gain": 0.0 if base else a["diff_vs_baseline"],
                           "ci95": None if base else a["diff_ci95"]})
    return points


COST_CAPTION = ("<p>Each arm's mean paired difference with the baseline against what its teacher cost per cell "
                "(paraknow.study.cost): PKT's sensitivity pass over the seed samples (6·params·tokens), logit "
                "KD's teacher forward on every training batch and sequence KD's generation (2·params·tokens); "
                "arms without a teacher sit at the left. The table's <i>teacher cost</i> column holds the same "
                "figures with the tokens and seconds.</p>")


DODGE_DECADES = 0.12  # on the cost chart's log axis, arms of one cost are drawn this far apart


def _dodged(xs: list[float]) -> list[float]:
    """Positions on a log axis where arms of equal cost (e.g. every arm without a teacher) sit side by
    side, centred on their cost, in their order, instead of on top of each other; a lone arm stays put."""
    out = list(xs)
    for value in set(xs):
        same = [i for i, v in enumerate(xs) if v == value]
        for k, i in enumerate(same):
            out[i] = value * 10 ** (DODGE_DECADES * (k - (len(same) - 1) / 2))
    return out


def cost_figure(points: list[dict], results: dict):
    """Gain over the baseline (accuracy points, paired 95 % CI) against the teacher's estimated FLOPs on
    a log axis, one marker per arm coloured by factor; teacher-free arms (0 FLOPs) sit at the left edge,
    labelled "no teacher", arms of equal cost side by side (the measured version of the paper's Figure 1)."""
    import math

    import plotly.graph_objects as go

    paid = [p["flops"] for p in points if p["flops"] > 0]
    low = 10 ** math.floor(math.log10(min(paid))) if paid else 1.0  # the first decade at or below the cheapest
    high = 10 ** math.ceil(math.log10(max(paid))) if paid else 10.0
    floor = low / 10  # where the arms without a teacher are drawn
    colors = _factor_colors(results["arms"])
    order = sorted(range(len(points)), key=lambda i: (points[i]["flops"], points[i]["gain"]))
    above = {order[k]: k % 2 == 0 for k in range(len(order))}  # neighbours' names alternate above and below
    x = _dodged([p["flops"] or floor for p in points])
    fig = go.Figure()
    for group, color in colors.items():
        members = [i for i, p in enumerate(points) if p["factor"] == group]
        if not members:
            continue
        textposition = ["top center" if above[i] else "bottom center" for i in members]
        xs = [x[i] for i in members]
        members = [points[i] for i in members]
        fig.add_trace(go.Scatter(
            x=xs, y=[100 * p["gain"] for p in members], mode="markers+text",
            name=group or "arms", marker={"color": color, "size": 11}, text=[p["arm"] for p in members],
            textposition=textposition,
            error_y={"type": "data", "symmetric": False,
                     "array": [100 * (p["ci95"][1] - p["gain"]) if p["ci95"] else 0 for p in members],
                     "arrayminus": [100 * (p["gain"] - p["ci95"][0]) if p["ci95"] else 0 for p in members]},
            customdata=[[cost_text({"teacher_flops": p["flops"], "teacher_tokens": p["tokens"],
                                    "teacher_seconds": p["seconds"]}), p["train_seconds"] or 0] for p in members],
            hovertemplate="%{text}<br>gain %{y:+.1f} points<br>teacher: %{customdata[0]}"
                          "<br>training %{customdata[1]:.1f} s<extra></extra>"))
    fig.add_hline(y=0, line_dash="dot", annotation_text=f"baseline {results['baseline']}")
    decades = [10 ** k for k in range(round(math.log10(low)), round(math.log10(high)) + 1)]
    fig.update_xaxes(type="log", tickvals=[floor, *decades], ticktext=["no teacher", *(si(d, "FLOP") for d in decades)],
                     range=[math.log10(floor) - 0.3, math.log10(high) + 0.3])
    fig.update_layout(xaxis_title="teacher cost per cell: estimated FLOPs (log scale)",
                      yaxis_title="gain over the baseline (accuracy points, paired 95 % CI)", margin={"t": 40},
                      height=460, legend_title_text="factor")
    return fig


def arm_curves(out, results: dict) -> list[dict]:
    """Per trained arm, the training loss per optimizer step averaged over its selected cells
    (its seeds at the chosen rate): [{"arm", "factor", "steps", "loss"}] in recipe order."""
    from ..runs.rundir import read_metrics

    factor = {a["arm"]: a.get("factor", "") for a in results["arms"]}
    curves = []
    for name in factor:
        sums: dict[int, list[float]] = {}
        for c in results["cells"]:
            if c["arm"] == name and c.get("selected") and c.get("run_dir"):
                for row in read_metrics(Path(out) / c["run_dir"]):
                    if row.get("loss") is not None:
                        sums.setdefault(row["step"], []).append(row["loss"])
        if sums:
            steps = sorted(sums)
            curves.append({"arm": name, "factor": factor[name], "steps": steps,
                           "loss": [sum(sums[k]) / len(sums[k]) for k in steps]})
    return curves


def curves_figure(curves: list[dict], results: dict):
    """The learning curves of all trained arms overlaid (mean over seeds), coloured by factor."""
    import plotly.graph_objects as go

    colors = _factor_colors(results["arms"])
    fig = go.Figure()
    shown = set()
    for c in curves:
        group = c["factor"]
        fig.add_trace(go.Scatter(x=c["steps"], y=c["loss"], mode="lines", name=group or "arms", legendgroup=group,
                                 showlegend=group not in shown, line={"color": colors.get(group), "width": 1.5},
                                 hovertemplate=f"{c['arm']}<br>step %{{x}}: loss %{{y:.3f}}<extra></extra>"))
        shown.add(group)
    fig.update_layout(xaxis_title="optimizer step", yaxis_title="training loss (mean over seeds)",
                      margin={"t": 40}, height=420, legend_title_text="factor")
    return fig


def seed_count_points(recipe: Recipe, results: dict) -> list[dict]:
    """The paper's seed-count figure: PKT arms that differ from the default extraction only in the
    number of seed samples, as {"samples", "arm", "mean", "ci95"} sorted by samples ([] when fewer
    than two such arms have results)."""
    from ..transfer.sensitivity import SensitivityConfig

    by_name = {a["arm"]: a for a in results["arms"]}
    points = []
    for arm in recipe.arms:
        if arm.init == "pkt" and set(arm.extract) <= {"samples"} and not arm.train:
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
    fig.update_xaxes(tickvals=[p["samples"] for p in points])
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


def report_html(recipe: Recipe, results: dict, out=None) -> str:
    """A self-contained page: the verdict table, the bar chart, the signals and their correlations."""
    figure = bars_figure(results).to_html(full_html=False, include_plotlyjs=True)
    points = seed_count_points(recipe, results)
    seed_curve = "" if not points else ("<h2>Number of seed samples</h2>" + seed_count_figure(
        points, results).to_html(full_html=False, include_plotlyjs=False))
    spent = cost_points(results)
    cost_chart = "" if not spent else ("<h2>Gain over the baseline vs teacher cost</h2>" + COST_CAPTION + cost_figure(
        spent, results).to_html(full_html=False, include_plotlyjs=False))
    arm_loss = arm_curves(out, results) if out is not None else []
    curves = "" if not arm_loss else ("<h2>Learning curves</h2>" + curves_figure(
        arm_loss, results).to_html(full_html=False, include_plotlyjs=False))
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
<h2>Comparisons</h2><p>Paired by seed, in accuracy points. Within each family the p-values are
corrected ({html.escape(str(results.get("correction")))}) and the adjusted interval is at level
1 &minus; 0.05/m; equivalence margin &plusmn;{100 * results.get("equivalence_margin", 0):g} points.</p>
{_html_table(comparison_rows(results))}
{figure}
{cost_chart}
{seed_curve}
{curves}
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
        atomic_write_text(out / REPORT_HTML, report_html(recipe, results, out))
    return results
