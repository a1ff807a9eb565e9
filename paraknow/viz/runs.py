"""Fine-tune charts: training curves of runs and the vanilla / PiSSA / PKT comparison."""
from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..runs.train_config import METHODS
from .common import new_figure

METHOD_COLORS = {"vanilla": "#757575", "pissa": "#1e88e5", "pkt": "#e53935"}
METHOD_NAMES = {"vanilla": "vanilla LoRA", "pissa": "PiSSA", "pkt": "PKT"}
RUN_PALETTE = ("#1e88e5", "#e53935", "#43a047", "#fb8c00", "#8e24aa", "#00acc1", "#6d4c41", "#d81b60",
               "#7cb342", "#3949ab", "#f4511e", "#546e7a")
CURVE_PANELS = (("loss", "training loss"), ("lr", "learning rate"), ("eval_loss", "eval loss"),
                ("eval_accuracy", "eval accuracy"))


def curve_points(rows: list[dict], key: str) -> tuple[list, list]:
    """(steps, values) of one metric from metrics.jsonl rows, skipping rows without it."""
    pts = [(r["step"], r[key]) for r in rows
           if r.get("step") is not None and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def run_curves(series: list[dict], height: int = 560) -> go.Figure:
    """Training loss, learning rate, eval loss and eval accuracy against the optimizer step, one colour
    per run (2 x 2 panels). `series`: [{"label": str, "rows": metrics.jsonl rows, optional "color" and
    "dash" (plotly dash style)}, ...].

    The layout keeps `uirevision` fixed, so a zoom survives the page's live redraws.
    """
    fig = make_subplots(rows=2, cols=2, subplot_titles=[t for _, t in CURVE_PANELS],
                        horizontal_spacing=0.08, vertical_spacing=0.16)
    n_points, last_step, drawn = 0, 0, set()  # drawn: the panels that have a point
    for i, s in enumerate(series):
        color = s.get("color") or RUN_PALETTE[i % len(RUN_PALETTE)]
        shown = False
        for k, (key, title) in enumerate(CURVE_PANELS):
            x, y = curve_points(s.get("rows") or [], key)
            if not x:
                continue
            n_points, last_step = n_points + len(x), max(last_step, max(x))
            drawn.add(key)
            is_eval = key.startswith("eval")
            value = "%{y:.1%}" if key == "eval_accuracy" else "%{y:.4g}"
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers" if is_eval or len(x) == 1 else "lines",
                                     name=s["label"], legendgroup=s["label"], showlegend=not shown,
                                     line=dict(color=color, width=2, dash=s.get("dash")), marker=dict(size=6),
                                     hovertemplate=f"{s['label']}<br>step %{{x}}: {title} {value}<extra></extra>"),
                          row=k // 2 + 1, col=k % 2 + 1)
            shown = True
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), uirevision="run-curves",
                      legend=dict(orientation="h", yanchor="top", y=-0.1, xanchor="left", x=0))
    fig.update_xaxes(title_text="step", row=2)
    if 0 < last_step <= 10:  # a few points (one, at first): whole steps from 0, not a range padded around them
        fig.update_xaxes(range=[0, last_step + 0.5], dtick=1)
    fig.update_yaxes(tickformat=".0%", rangemode="tozero", row=2, col=2)
    fig.update_yaxes(exponentformat="e", row=1, col=2)
    if not n_points:
        fig.add_annotation(text="no metrics yet: the first point appears after the first optimizer step",
                           x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False)
        return fig
    for k, (key, _) in enumerate(CURVE_PANELS):
        if key.startswith("eval") and key not in drawn:  # training has begun; no evaluation yet
            axis = "" if k == 0 else str(k + 1)
            fig.add_annotation(text="no evaluation yet: it appears at the first eval step<br>(or at the end)",
                               x=0.5, y=0.5, xref=f"x{axis} domain", yref=f"y{axis} domain", showarrow=False,
                               font=dict(color="#757575"))
    return fig


def _pct(v) -> str:
    return "–" if v is None else f"{v:.1%}"


def comparison_rows(results: dict) -> list[dict]:
    """One table row per method from `jobs.group_results`: finished/total runs, final accuracy
    mean ± std (sample std), min, max, final eval loss, and the runs' states."""
    rows = []
    methods = results.get("methods", {})
    for method in [m for m in METHODS if m in methods] + [m for m in methods if m not in METHODS]:
        entry = methods[method]
        acc, loss = entry["accuracy"], entry["loss"]
        rows.append({
            "method": METHOD_NAMES.get(method, method),
            "finished": f"{acc['n']}/{len(entry['runs'])}",
            "accuracy (mean ± std)": "–" if acc["mean"] is None else f"{acc['mean']:.1%} ± {acc['std']:.1%}",
            "min": _pct(acc["min"]), "max": _pct(acc["max"]),
            "eval loss (mean ± std)": "–" if loss["mean"] is None else f"{loss['mean']:.4f} ± {loss['std']:.4f}",
            "states": ", ".join(f"{n} {s}" for s, n in sorted(entry["states"].items())),
        })
    return rows


def comparison_figure(results: dict, points: dict[str, list[tuple[str, float]]] | None = None,
                      height: int = 380) -> go.Figure:
    """Final accuracy per method: a bar at the mean with a ± std error bar and min/max in the hover,
    plus each finished run as a dot (`points`: {method: [(run label, accuracy), ...]})."""
    methods = results.get("methods", {})
    order = [m for m in METHODS if m in methods] + [m for m in methods if m not in METHODS]
    n = max((methods[m]["accuracy"]["n"] for m in order), default=0)
    fig = new_figure(height, title=f"Final eval accuracy per method (mean ± std over {n} seed{'s' if n != 1 else ''})",
               showlegend=False, bargap=0.45)
    names = [METHOD_NAMES.get(m, m) for m in order]
    for method, name in zip(order, names):
        acc = methods[method]["accuracy"]
        if acc["mean"] is None:
            continue
        fig.add_trace(go.Bar(
            x=[name], y=[acc["mean"]], name=name, marker_color=METHOD_COLORS.get(method, "#90a4ae"), opacity=0.75,
            error_y=dict(type="data", array=[acc["std"]], visible=True, thickness=2, width=12, color="#263238"),
            text=[f"{acc['mean']:.1%} ± {acc['std']:.1%}"], textposition="inside", insidetextanchor="start",
            hovertemplate=(f"{name}<br>mean %{{y:.1%}} ± {acc['std']:.1%} (n={acc['n']})<br>"
                           f"min {acc['min']:.1%} · max {acc['max']:.1%}<extra></extra>")))
    for method, name in zip(order, names):
        pts = (points or {}).get(method) or []
        if not pts:
            continue
        fig.add_trace(go.Scatter(
            x=[name] * len(pts), y=[p[1] for p in pts], mode="markers", name=f"{name} runs",
            marker=dict(color="#263238", size=9, symbol="circle-open", line=dict(width=2)),
            customdata=[p[0] for p in pts], hovertemplate="%{customdata}: %{y:.1%}<extra></extra>"))
    fig.update_xaxes(categoryorder="array", categoryarray=names)
    fig.update_yaxes(tickformat=".0%", rangemode="tozero", title="final eval accuracy")
    if not fig.data:  # empty axes would autorange to nonsense (-1..6, 0..800 %): pin them
        fig.add_annotation(text="no finished runs yet", x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False)
        fig.update_xaxes(range=[-0.5, len(names) - 0.5] if names else [-0.5, 0.5], showticklabels=bool(names))
        fig.update_yaxes(range=[0, 1])
    return fig
