"""Sensitivity charts: the layers x modules heat map, per-layer bars, group shares, and two maps compared."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..core.errors import ParaknowError
from ..transfer.sensitivity_map import GROUP_LABELS
from .common import (DIVERGING, DONE_COLOR, MODULE_ORDER, SELECT_COLOR, SEQUENTIAL, fit_to_cells, fmt_value,
    log10_floored, new_figure)


def module_grid(table: list[dict], value: str = "sum") -> tuple[np.ndarray, list[int], list[str]]:
    """`sensitivity.module_table` rows -> (z [layers, modules], layers, modules); value sum|mean."""
    if value not in ("sum", "mean"):
        raise ParaknowError(f"unknown value '{value}': use sum or mean.")
    layers = sorted({r["layer"] for r in table})
    modules = [m for m in MODULE_ORDER if any(r["module"] == m for r in table)]
    z = np.full((len(layers), len(modules)), np.nan)
    li, mi = {l: i for i, l in enumerate(layers)}, {m: i for i, m in enumerate(modules)}
    for r in table:
        z[li[r["layer"]], mi[r["module"]]] = r[value]
    return z, layers, modules


def _cell_overlay(layers, modules, height_px: int, selected=None) -> go.Scatter:
    """Invisible square markers over every cell carrying [layer, module] as customdata (clicks)."""
    xs, ys, data = [], [], []
    for i, layer in enumerate(layers):
        for j, module in enumerate(modules):
            xs.append(j)
            ys.append(i)
            data.append([layer, module])
    size = max(6, min(40, int(0.8 * height_px / max(1, len(layers)))))
    return go.Scatter(x=xs, y=ys, mode="markers", customdata=data, name="cells", showlegend=False,
                      marker=dict(symbol="square", size=size, color="rgba(0,0,0,0)", opacity=0),
                      hovertemplate="layer %{customdata[0]} · %{customdata[1]}<br>click to drill down"
                                    "<extra></extra>")


HEATMAP_TITLE_PX = 56  # the title and the gap under it
LABEL_PX_PER_CHAR = 4  # the height a -30° label grows by per character (7 px wide x sin 30°, rounded up)


def sensitivity_heatmap(table: list[dict], value: str = "sum", log: bool = False, title: str | None = None,
                        selected: tuple[int, str] | None = None, height: int | None = None) -> go.Figure:
    """Layer x module heatmap of summed (or per-parameter mean) sensitivity, clickable per cell.

    Traces: [0] the heatmap, [1] invisible scatter markers with customdata [layer, module]
    (use with `st.plotly_chart(on_select=...)`). `selected` draws a frame around one cell.
    """
    z, layers, modules = module_grid(table, value)
    height = height or max(380, min(900, 100 + 30 * len(layers)))
    shown = log10_floored(z) if log else z
    label = ("log10 " if log else "") + ("sum" if value == "sum" else "mean per parameter")
    text = [[f"layer {l} · {m}<br>{value}: {fmt_value(z[i, j])}" for j, m in enumerate(modules)]
            for i, l in enumerate(layers)]
    fig = new_figure(height, title=title or f"Teacher sensitivity by layer and module ({label})")
    fig.add_trace(go.Heatmap(z=shown, x=list(range(len(modules))), y=list(range(len(layers))),
                             colorscale=SEQUENTIAL, text=text, hoverinfo="skip",
                             colorbar=dict(title=dict(text=label, side="right"), thickness=14)))
    fig.add_trace(_cell_overlay(layers, modules, height - 70, selected))
    if selected is not None and selected[0] in layers and selected[1] in modules:
        i, j = layers.index(selected[0]), modules.index(selected[1])
        fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5,
                      line=dict(color=SELECT_COLOR, width=3))
    # the module labels sit above the grid at a fixed angle, below the title pinned to the figure's top: a
    # margin sized for the longest label, so no redraw (narrower, recomputed) can rotate them into the title
    fig.update_xaxes(tickvals=list(range(len(modules))), ticktext=modules, side="top", showgrid=False,
                     tickangle=-30, automargin=False)
    fig.update_yaxes(tickvals=list(range(len(layers))), ticktext=[str(l) for l in layers], title="layer",
                     showgrid=False)
    fit_to_cells(fig, len(modules), len(layers))  # the click markers would pad an automatic range
    fig.update_layout(clickmode="event+select", dragmode=False,
                      margin=dict(t=HEATMAP_TITLE_PX + LABEL_PX_PER_CHAR * max(map(len, modules), default=0)),
                      title=dict(yref="container", y=1.0, yanchor="top", pad=dict(t=10)))
    return fig


def layer_bars(scores: list[float], highlight: list[int] | None = None, title: str | None = None,
               height: int = 300) -> go.Figure:
    """Bar per teacher layer of its share of the summed sensitivity; `highlight` layers coloured."""
    total = sum(scores) or 1.0
    share = [s / total for s in scores]
    hi = set(highlight or [])
    colors = [DONE_COLOR if i in hi else "#78909c" for i in range(len(scores))]
    fig = new_figure(height, title=title or "Layer scores (share of the summed sensitivity)")
    fig.add_trace(go.Bar(x=list(range(len(scores))), y=share, marker_color=colors,
                         customdata=[[s] for s in scores],
                         hovertemplate="layer %{x}: %{y:.1%} (sum %{customdata[0]:.4g})<extra></extra>"))
    fig.update_xaxes(title="teacher layer", dtick=1 if len(scores) <= 16 else None)
    fig.update_yaxes(tickformat=".0%", title="share")
    return fig


def group_share_figure(shares: dict[str, float], height: int = 220) -> go.Figure:
    """Horizontal stacked bar of attention / FFN / embeddings / norms shares (GROUP_LABELS' names)."""
    colors = {"attention": "#1e88e5", "ffn": "#fb8c00", "embeddings": "#8e24aa", "other": "#9e9e9e"}
    fig = new_figure(height, title="Where the sensitivity sits", barmode="stack",
               legend=dict(orientation="h", y=-0.25, traceorder="normal"))
    for group, value in shares.items():
        name = GROUP_LABELS.get(group, group)
        fig.add_trace(go.Bar(y=["share"], x=[value], name=name, orientation="h",
                             marker_color=colors.get(group), text=[f"{value:.0%}"], textposition="inside",
                             hovertemplate=f"{name}: %{{x:.1%}}<extra></extra>"))
    fig.update_xaxes(tickformat=".0%", range=[0, 1])
    fig.update_yaxes(visible=False)
    return fig


def share_grid(table: list[dict], value: str = "sum") -> tuple[np.ndarray, list[int], list[str]]:
    """module_grid normalised so the cells sum to 1 (maps of different tasks become comparable)."""
    z, layers, modules = module_grid(table, value)
    total = np.nansum(z)
    return (z / total if total > 0 else z), layers, modules


def compare_figure(table_a: list[dict], table_b: list[dict], label_a: str, label_b: str,
                   mode: str = "diff", value: str = "sum") -> go.Figure:
    """Two tasks' layer x module maps (as shares of their totals): side by side, or B - A."""
    za, layers, modules = share_grid(table_a, value)
    zb, layers_b, modules_b = share_grid(table_b, value)
    if (layers, modules) != (layers_b, modules_b):
        raise ParaknowError("the two sensitivity maps come from different architectures; compute both "
                            "on the same teacher.")
    height = max(280, min(900, 90 + 24 * len(layers)))
    ticks = dict(tickvals=list(range(len(modules))), ticktext=modules)
    if mode == "side":
        fig = make_subplots(rows=1, cols=2, subplot_titles=(label_a, label_b), shared_yaxes=True,
                            horizontal_spacing=0.04)
        zmax = float(np.nanmax([np.nanmax(za), np.nanmax(zb)]))
        for col, z, label in ((1, za, label_a), (2, zb, label_b)):
            fig.add_trace(go.Heatmap(z=z, x=list(range(len(modules))), y=list(range(len(layers))), zmin=0,
                                     zmax=zmax, colorscale=SEQUENTIAL, showscale=col == 2,
                                     colorbar=dict(title=dict(text="share", side="right"), tickformat=".1%"),
                                     hovertemplate=f"{label}<br>layer %{{y}} · %{{x}}: %{{z:.2%}}<extra></extra>"),
                          row=1, col=col)
            fig.update_xaxes(row=1, col=col, **ticks)
        fig.update_yaxes(autorange="reversed", title="layer", row=1, col=1)
        fig.update_yaxes(autorange="reversed", row=1, col=2)
        fig.update_layout(height=height, margin=dict(l=10, r=10, t=60, b=10),
                          title="Share of each map's total sensitivity")
        return fig
    if mode != "diff":
        raise ParaknowError(f"unknown compare mode '{mode}': use side or diff.")
    d = zb - za
    lim = float(np.nanmax(np.abs(d))) or 1e-12
    fig = new_figure(height, title=f"{label_b} minus {label_a} (share of each map's total)")
    fig.add_trace(go.Heatmap(z=d, x=list(range(len(modules))), y=list(range(len(layers))), zmid=0,
                             zmin=-lim, zmax=lim, colorscale=DIVERGING,
                             colorbar=dict(title=dict(text="Δ share", side="right"), tickformat="+.1%"),
                             hovertemplate="layer %{y} · %{x}: %{z:+.2%}<extra></extra>"))
    fig.update_xaxes(side="top", **ticks)
    fig.update_yaxes(autorange="reversed", title="layer", tickvals=list(range(len(layers))))
    fig.update_layout(margin=dict(t=80))
    return fig


def layer_share_diff(scores_a: list[float], scores_b: list[float], label_a: str, label_b: str,
                     height: int = 300) -> go.Figure:
    """Grouped bars of each layer's share under task A and task B (task-specific layers stand out)."""
    ta, tb = (sum(scores_a) or 1.0), (sum(scores_b) or 1.0)
    fig = new_figure(height, title="Layer shares per task", barmode="group", legend=dict(orientation="h", y=1.12))
    x = list(range(len(scores_a)))
    fig.add_trace(go.Bar(x=x, y=[s / ta for s in scores_a], name=label_a, marker_color="#1e88e5"))
    fig.add_trace(go.Bar(x=x, y=[s / tb for s in scores_b], name=label_b, marker_color="#fb8c00"))
    fig.update_xaxes(title="teacher layer", dtick=1 if len(x) <= 40 else None)
    fig.update_yaxes(tickformat=".0%")
    return fig


def task_specific_layers(scores_a: list[float], scores_b: list[float], top: int = 3) -> list[tuple[int, float]]:
    """Layers whose share differs most between two maps: [(layer, share_b - share_a)], largest |Δ| first."""
    ta, tb = (sum(scores_a) or 1.0), (sum(scores_b) or 1.0)
    diffs = [(i, b / tb - a / ta) for i, (a, b) in enumerate(zip(scores_a, scores_b))]
    return sorted(diffs, key=lambda d: -abs(d[1]))[:top]
