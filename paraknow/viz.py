"""Plotly figure builders and small table helpers for the app's pages (pure: no streamlit).

Every builder takes plain data (lists, dicts, tensors, the library's dataclasses) and
returns a `plotly.graph_objects.Figure`, so the pages stay thin and everything here is
testable without a browser. Big matrices are pooled to at most ~256 x 256 cells before
they become a figure (`pool_for_display`).

Conventions: layers run top to bottom (layer 0 first), weight matrices are drawn as
[out (rows), in (columns)] in *teacher index* coordinates, so overlays such as the
selected block can be placed with the indices the library uses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import plotly.colors
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .errors import ParaknowError
from .models import ATTN_ROLES, EMBED_ROLES, FFN_ROLES

MODULE_ORDER = ATTN_ROLES + FFN_ROLES
PIPELINE_STEPS = ("Models", "Sensitivity", "Mapping", "Export", "Fine-tune")
SEQUENTIAL = "Viridis"
DIVERGING = "RdBu_r"
DONE_COLOR, TODO_COLOR, NEXT_COLOR = "#2e7d32", "#b0bec5", "#f9a825"
SELECT_COLOR = "#ff1744"
HEAD_COLOR = "#e0e0e0"  # attention-head boundaries on the drill-down


def _fig(height: int, **layout) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), **layout)
    return fig


def distinct_colors(n: int) -> list[str]:
    """n colours that stay distinct past plotly's 10-colour cycle (a sampled rainbow scale)."""
    if n <= 10:
        return plotly.colors.qualitative.Plotly[:n]
    return plotly.colors.sample_colorscale("Turbo", [0.05 + 0.9 * i / (n - 1) for i in range(n)])


def _log10(z: np.ndarray) -> np.ndarray:
    """log10 with non-positive entries floored just below the smallest positive value."""
    z = np.asarray(z, dtype=np.float64)
    positive = z[np.isfinite(z) & (z > 0)]
    floor = positive.min() / 10 if positive.size else 1e-30
    out = np.log10(np.where(np.isfinite(z), np.maximum(z, floor), np.nan))
    return out


def _fmt(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.4g}"


# ---------------------------------------------------------------------------------------
# Home


def pipeline_figure(done: dict[str, bool] | None = None) -> go.Figure:
    """The PKT pipeline as five boxes with arrows; finished steps green, the next one amber."""
    done = done or {}
    next_step = next((s for s in PIPELINE_STEPS if not done.get(s)), None)
    colors = [DONE_COLOR if done.get(s) else NEXT_COLOR if s == next_step else TODO_COLOR
              for s in PIPELINE_STEPS]
    details = ("teacher + student", "|θ·∇L| on seeds", "layers + submatrices",
               "SVD -> LoRA init", "student LoRA")
    xs = list(range(len(PIPELINE_STEPS)))
    fig = _fig(150, showlegend=False, plot_bgcolor="rgba(0,0,0,0)", paper_bgcolor="rgba(0,0,0,0)")
    fig.update_layout(margin=dict(l=10, r=10, t=10, b=10))
    for i in range(len(xs) - 1):
        fig.add_annotation(x=xs[i + 1] - 0.36, y=0, ax=xs[i] + 0.36, ay=0, xref="x", yref="y",
                           axref="x", ayref="y", showarrow=True, arrowhead=3, arrowwidth=2,
                           arrowcolor="#607d8b", text="")
    for x, step, color, detail in zip(xs, PIPELINE_STEPS, colors, details):
        fig.add_shape(type="rect", x0=x - 0.34, x1=x + 0.34, y0=-0.42, y1=0.42,
                      fillcolor=color, line=dict(width=0), layer="below")
        fig.add_annotation(x=x, y=0.1, text=f"<b>{step}</b>", showarrow=False,
                           font=dict(color="white", size=15))
        fig.add_annotation(x=x, y=-0.2, text=detail, showarrow=False, font=dict(color="white", size=11))
    fig.add_trace(go.Scatter(x=xs, y=[0] * len(xs), mode="markers", marker=dict(opacity=0),
                             hoverinfo="skip"))
    fig.update_xaxes(visible=False, range=[-0.45, len(xs) - 0.55])
    fig.update_yaxes(visible=False, range=[-0.5, 0.5])
    return fig


# ---------------------------------------------------------------------------------------
# Sensitivity: layers x modules


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


def sensitivity_heatmap(table: list[dict], value: str = "sum", log: bool = False, title: str | None = None,
                        selected: tuple[int, str] | None = None, height: int | None = None) -> go.Figure:
    """Layer x module heatmap of summed (or per-parameter mean) sensitivity, clickable per cell.

    Traces: [0] the heatmap, [1] invisible scatter markers with customdata [layer, module]
    (use with `st.plotly_chart(on_select=...)`). `selected` draws a frame around one cell.
    """
    z, layers, modules = module_grid(table, value)
    height = height or max(380, min(900, 100 + 30 * len(layers)))
    shown = _log10(z) if log else z
    label = ("log10 " if log else "") + ("sum" if value == "sum" else "mean per parameter")
    text = [[f"layer {l} · {m}<br>{value}: {_fmt(z[i, j])}" for j, m in enumerate(modules)]
            for i, l in enumerate(layers)]
    fig = _fig(height, title=title or f"Teacher sensitivity by layer and module ({label})")
    fig.add_trace(go.Heatmap(z=shown, x=list(range(len(modules))), y=list(range(len(layers))),
                             colorscale=SEQUENTIAL, text=text, hoverinfo="skip",
                             colorbar=dict(title=dict(text=label, side="right"), thickness=14)))
    fig.add_trace(_cell_overlay(layers, modules, height - 70, selected))
    if selected is not None and selected[0] in layers and selected[1] in modules:
        i, j = layers.index(selected[0]), modules.index(selected[1])
        fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5,
                      line=dict(color=SELECT_COLOR, width=3))
    fig.update_xaxes(tickvals=list(range(len(modules))), ticktext=modules, side="top", showgrid=False)
    fig.update_yaxes(tickvals=list(range(len(layers))), ticktext=[str(l) for l in layers],
                     autorange="reversed", title="layer", showgrid=False)
    fig.update_layout(clickmode="event+select", dragmode=False, margin=dict(t=80))
    return fig


def layer_bars(scores: list[float], highlight: list[int] | None = None, title: str | None = None,
               height: int = 300) -> go.Figure:
    """Bar per teacher layer of its share of the summed sensitivity; `highlight` layers coloured."""
    total = sum(scores) or 1.0
    share = [s / total for s in scores]
    hi = set(highlight or [])
    colors = [DONE_COLOR if i in hi else "#78909c" for i in range(len(scores))]
    fig = _fig(height, title=title or "Layer scores (share of the summed sensitivity)")
    fig.add_trace(go.Bar(x=list(range(len(scores))), y=share, marker_color=colors,
                         customdata=[[s] for s in scores],
                         hovertemplate="layer %{x}: %{y:.1%} (sum %{customdata[0]:.4g})<extra></extra>"))
    fig.update_xaxes(title="teacher layer", dtick=1 if len(scores) <= 16 else None)
    fig.update_yaxes(tickformat=".0%", title="share")
    return fig


def group_share_figure(shares: dict[str, float], height: int = 220) -> go.Figure:
    """Horizontal stacked bar of attention / FFN / embeddings / other shares."""
    colors = {"attention": "#1e88e5", "ffn": "#fb8c00", "embeddings": "#8e24aa", "other": "#9e9e9e"}
    fig = _fig(height, title="Where the sensitivity sits", barmode="stack",
               legend=dict(orientation="h", y=-0.25, traceorder="normal"))
    for name, value in shares.items():
        fig.add_trace(go.Bar(y=["share"], x=[value], name=name, orientation="h",
                             marker_color=colors.get(name), text=[f"{value:.0%}"], textposition="inside",
                             hovertemplate=f"{name}: %{{x:.1%}}<extra></extra>"))
    fig.update_xaxes(tickformat=".0%", range=[0, 1])
    fig.update_yaxes(visible=False)
    return fig


# ---------------------------------------------------------------------------------------
# Drill-down into one matrix


@dataclass
class Pooled:
    """A matrix pooled for display, with the teacher-index centre of each cell and marginals."""
    values: np.ndarray  # [rows, cols] mean over each cell's block
    row_centres: np.ndarray  # [rows] teacher row index at each cell's centre
    col_centres: np.ndarray  # [cols]
    row_marginal: np.ndarray  # [rows] mean row sum of the rows in each cell
    col_marginal: np.ndarray  # [cols] mean column sum of the columns in each cell
    shape: tuple[int, int]  # the full matrix's shape


def _bin_edges(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of adaptive pooling's k bins over n items."""
    i = np.arange(k)
    return (i * n) // k, -((-(i + 1) * n) // k)


def _pool1d(v: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.adaptive_avg_pool1d(v.float()[None, None], k)[0, 0]


def pool_for_display(matrix: torch.Tensor, max_rows: int = 256, max_cols: int = 256,
                     reduce: str = "mean") -> Pooled:
    """Pool a 2-D (or 1-D) score matrix to at most max_rows x max_cols, with marginals.

    `reduce` is how a cell summarises its block: `mean` or `max` (max keeps isolated hot entries,
    e.g. the few vocabulary rows of an embedding that the seed samples use, visible).
    Marginals are the full-resolution row/column sums (float32), averaged within each cell.
    """
    if reduce not in ("mean", "max"):
        raise ParaknowError(f"unknown pooling '{reduce}': use mean or max.")
    m = matrix.detach()
    if m.dim() == 1:
        m = m[None, :]
    m = m.float().cpu()
    n_rows, n_cols = m.shape
    k_r, k_c = min(max_rows, n_rows), min(max_cols, n_cols)
    pool = torch.nn.functional.adaptive_avg_pool2d if reduce == "mean" else torch.nn.functional.adaptive_max_pool2d
    values = pool(m[None, None], (k_r, k_c))[0, 0]
    rs, re_ = _bin_edges(n_rows, k_r)
    cs, ce = _bin_edges(n_cols, k_c)
    return Pooled(values=values.numpy().astype(np.float64),
                  row_centres=(rs + re_ - 1) / 2, col_centres=(cs + ce - 1) / 2,
                  row_marginal=_pool1d(m.sum(1), k_r).numpy().astype(np.float64),
                  col_marginal=_pool1d(m.sum(0), k_c).numpy().astype(np.float64),
                  shape=(n_rows, n_cols))


def pooled_mask(selection, shape: tuple[int, int], max_rows: int = 256, max_cols: int = 256) -> np.ndarray:
    """Fraction of each display cell covered by a `Selection` (same pooling as the heatmap)."""
    n_rows, n_cols = shape
    k_r, k_c = min(max_rows, n_rows), min(max_cols, n_cols)
    if selection.flat is None:
        rows = torch.zeros(n_rows)
        rows[selection.rows] = 1
        cols = torch.zeros(n_cols)
        cols[selection.cols] = 1
        return np.outer(_pool1d(rows, k_r).numpy(), _pool1d(cols, k_c).numpy())
    mask = torch.zeros(n_rows * n_cols)
    mask[selection.flat] = 1
    return torch.nn.functional.adaptive_avg_pool2d(mask.view(1, 1, n_rows, n_cols), (k_r, k_c))[0, 0].numpy()


def matrix_figure(matrix: torch.Tensor, title: str = "", log: bool = False, max_cells: int = 256,
                  selection=None, height: int = 620, pooled: Pooled | None = None,
                  reduce: str = "mean", heads: dict | None = None) -> go.Figure:
    """Pooled heatmap of one weight's sensitivity [out, in] with row and column marginals.

    Traces: [0] column marginal (top), [1] heatmap, [2] row marginal (right), then
    [3] the selection mask for non-block selections. A contiguous block is a rectangle shape.
    `heads` {"rows" or "cols": head_dim} draws the attention-head boundaries along that axis.
    """
    p = pooled or pool_for_display(matrix, max_cells, max_cells, reduce)
    n_rows, n_cols = p.shape
    shown = _log10(p.values) if log else p.values
    fig = make_subplots(rows=2, cols=2, column_widths=[0.84, 0.16], row_heights=[0.16, 0.84],
                        shared_xaxes=True, shared_yaxes=True, horizontal_spacing=0.015,
                        vertical_spacing=0.02)
    fig.add_trace(go.Scatter(x=p.col_centres, y=p.col_marginal, mode="lines", line=dict(color="#37474f", width=1),
                             fill="tozeroy", name="column sums",
                             hovertemplate="col ≈%{x:.0f}: column sum %{y:.4g}<extra></extra>"), row=1, col=1)
    cell_h = n_rows / len(p.row_centres)
    cell_w = n_cols / len(p.col_centres)
    pooled_note = "" if (cell_h == 1 and cell_w == 1) else (
        f"<br><sup>pooled for display: {reduce} of {cell_h:.3g} x {cell_w:.3g} entries per cell</sup>")
    fig.add_trace(go.Heatmap(z=shown, x=p.col_centres, y=p.row_centres, colorscale=SEQUENTIAL,
                             colorbar=dict(title=dict(text=f"log10 {reduce}" if log else reduce, side="right"),
                                           thickness=12, x=1.0, len=0.8, y=0.42),
                             hovertemplate="row ≈%{y:.0f}, col ≈%{x:.0f}: %{z:.4g}<extra></extra>"),
                  row=2, col=1)
    fig.add_trace(go.Scatter(x=p.row_marginal, y=p.row_centres, mode="lines", line=dict(color="#37474f", width=1),
                             fill="tozerox", name="row sums",
                             hovertemplate="row ≈%{y:.0f}: row sum %{x:.4g}<extra></extra>"), row=2, col=2)
    if selection is not None:
        block = selection.block()
        if block is not None:
            r, c = block
            o_s, i_s = selection.shape
            fig.add_shape(type="rect", x0=c - 0.5, x1=c + i_s - 0.5, y0=r - 0.5, y1=r + o_s - 0.5,
                          line=dict(color=SELECT_COLOR, width=3), row=2, col=1)
        else:
            mask = pooled_mask(selection, (n_rows, n_cols), len(p.row_centres), len(p.col_centres))
            fig.add_trace(go.Heatmap(z=mask, x=p.col_centres, y=p.row_centres, zmin=0, zmax=1, showscale=False,
                                     colorscale=[[0, "rgba(255,23,68,0)"], [1, "rgba(255,23,68,0.6)"]],
                                     hovertemplate="selected share of cell: %{z:.0%}<extra></extra>"),
                          row=2, col=1)
    for axis, step in (heads or {}).items():
        extent = n_rows if axis == "rows" else n_cols
        for edge in range(step, extent, step):
            if axis == "rows":
                fig.add_shape(type="line", x0=-0.5, x1=n_cols - 0.5, y0=edge - 0.5, y1=edge - 0.5,
                              line=dict(color=HEAD_COLOR, width=1, dash="dot"), row=2, col=1)
            else:
                fig.add_shape(type="line", y0=-0.5, y1=n_rows - 0.5, x0=edge - 0.5, x1=edge - 0.5,
                              line=dict(color=HEAD_COLOR, width=1, dash="dot"), row=2, col=1)
    fig.update_yaxes(autorange="reversed", row=2, col=1, title="row (out)")
    fig.update_yaxes(autorange="reversed", row=2, col=2)
    fig.update_xaxes(title="column (in)", row=2, col=1)
    fig.update_xaxes(showticklabels=False, row=2, col=2)
    fig.update_yaxes(showticklabels=False, row=1, col=1)
    fig.update_layout(height=height, showlegend=False, margin=dict(l=10, r=10, t=70 if pooled_note else 50, b=10),
                      title=(title or "sensitivity") + f" [{n_rows} x {n_cols}]{pooled_note}")
    return fig


# ---------------------------------------------------------------------------------------
# Comparing two sensitivity maps


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
    fig = _fig(height, title=f"{label_b} minus {label_a} (share of each map's total)")
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
    fig = _fig(height, title="Layer shares per task", barmode="group", legend=dict(orientation="h", y=1.12))
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


# ---------------------------------------------------------------------------------------
# Mapping


def mapping_diagram(layer_map: list, n_teacher: int, layer_scores: list[float] | None = None,
                    height: int | None = None) -> go.Figure:
    """Teacher layers (left) -> student layers (right); lines show which teacher layer feeds which."""
    n_student = len(layer_map)
    height = height or max(300, min(900, 60 + 24 * max(n_teacher, n_student)))
    span = max(n_teacher - 1, 1)
    ys = [j * span / max(n_student - 1, 1) if n_student > 1 else span / 2 for j in range(n_student)]
    fig = _fig(height, title="Layer mapping: teacher -> student", showlegend=False)
    for j, t in enumerate(layer_map):
        if t is None:
            continue
        fig.add_trace(go.Scatter(x=[0, 1], y=[t, ys[j]], mode="lines", line=dict(color="#90a4ae", width=2),
                                 hoverinfo="skip"))
    used = {t for t in layer_map if t is not None}
    total = sum(layer_scores) if layer_scores else 0
    share = [s / total for s in layer_scores] if layer_scores and total > 0 else None
    t_text = [f"T{i}" for i in range(n_teacher)]
    fig.add_trace(go.Scatter(
        x=[0] * n_teacher, y=list(range(n_teacher)), mode="markers+text", text=t_text, textposition="middle left",
        marker=dict(size=16, color=share if share else ["#1e88e5" if i in used else "#cfd8dc" for i in range(n_teacher)],
                    colorscale=SEQUENTIAL if share else None, line=dict(
                        color=[SELECT_COLOR if i in used else "#90a4ae" for i in range(n_teacher)], width=2),
                    showscale=bool(share), colorbar=dict(title=dict(text="layer share"), tickformat=".1%",
                                                         thickness=10, x=1.02) if share else None),
        customdata=[[share[i] if share else 0.0] for i in range(n_teacher)],
        hovertemplate="teacher layer %{y}" + (": %{customdata[0]:.1%} of the sensitivity" if share else "")
                      + "<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=[1] * n_student, y=ys, mode="markers+text", text=[f"S{j}" for j in range(n_student)],
        textposition="middle right",
        marker=dict(size=16, symbol="square",
                    color=["#2e7d32" if t is not None else "#eceff1" for t in layer_map],
                    line=dict(color="#455a64", width=1)),
        customdata=[["unmapped" if t is None else f"teacher layer {t}"] for t in layer_map],
        hovertemplate="student layer %{text}: %{customdata[0]}<extra></extra>"))
    fig.update_xaxes(visible=False, range=[-0.35, 1.35])
    fig.update_yaxes(visible=False, autorange="reversed")
    fig.add_annotation(x=0, y=-0.9, text="<b>teacher</b>", showarrow=False, yref="y")
    fig.add_annotation(x=1, y=-0.9, text="<b>student</b>", showarrow=False, yref="y")
    return fig


TABLE_STUDENT, TABLE_TEACHER = "student layer", "teacher layer"
UNMAPPED = "-"


def mapping_table(layer_map: list, layer_scores: list[float] | None = None) -> list[dict]:
    """A layer map as table rows {student layer, teacher layer ('-' when unmapped), share}."""
    total = sum(layer_scores) if layer_scores else 0
    rows = []
    for j, t in enumerate(layer_map):
        row = {TABLE_STUDENT: j, TABLE_TEACHER: UNMAPPED if t is None else str(t)}
        if layer_scores is not None:
            row["teacher layer share"] = (layer_scores[t] / total if t is not None and total > 0 else None)
        rows.append(row)
    return rows


def table_to_mapping(rows: list[dict], n_student: int, n_teacher: int) -> list[int | None]:
    """Table rows (as from `mapping_table`, possibly edited) -> a manual layer map.

    The teacher cell may be an int, a digit string, or '-' / '' / None / NaN (unmapped).
    Rows are matched to student layers by their `student layer` value when present.
    """
    if len(rows) != n_student:
        raise ParaknowError(f"the mapping table has {len(rows)} rows but the student has {n_student} layers; "
                            "keep exactly one row per student layer.")
    out: list[int | None] = [None] * n_student
    seen = set()
    for k, row in enumerate(rows):
        j = row.get(TABLE_STUDENT, k)
        try:
            j = int(j)
        except (TypeError, ValueError):
            raise ParaknowError(f"row {k + 1}: student layer {j!r} is not a number.") from None
        if not 0 <= j < n_student or j in seen:
            raise ParaknowError(f"row {k + 1}: student layer {j} is out of range or repeated; "
                                f"the rows must cover student layers 0..{n_student - 1} once each.")
        seen.add(j)
        cell = row.get(TABLE_TEACHER)
        if cell is None or (isinstance(cell, float) and math.isnan(cell)):
            continue
        if isinstance(cell, str):
            text = cell.strip().lower()
            if text in ("", "-", "none", "unmapped"):
                continue
            if not text.lstrip("-").isdigit():
                raise ParaknowError(f"student layer {j}: '{cell}' is not a teacher layer; "
                                    f"use a number 0..{n_teacher - 1}, or - to leave it unmapped.")
            cell = int(text)
        if isinstance(cell, float):
            if not cell.is_integer():
                raise ParaknowError(f"student layer {j}: {cell} is not a whole layer number.")
            cell = int(cell)
        if isinstance(cell, bool) or not isinstance(cell, (int, np.integer)):
            raise ParaknowError(f"student layer {j}: {cell!r} is not a teacher layer number.")
        if not 0 <= int(cell) < n_teacher:
            raise ParaknowError(f"student layer {j}: teacher layer {cell} does not exist; "
                                f"the teacher has layers 0..{n_teacher - 1}.")
        out[j] = int(cell)
    return out


def plan_rows(plan) -> list[dict]:
    """One summary row per planned module of a `TransferPlan` (for a table)."""
    rows = []
    for m in plan.modules:
        block = m.selection.block()
        rows.append({"student module": m.student_module, "role": m.role, "student layer": m.student_layer,
                     "teacher layer": m.teacher_layer, "teacher shape": "x".join(map(str, m.teacher_shape)),
                     "student shape": "x".join(map(str, m.shape)),
                     "block at": f"({block[0]}, {block[1]})" if block else "scattered",
                     "captured": m.captured, "area": m.area, "lift": m.lift})
    return rows


def captured_bars(plan, height: int | None = None) -> go.Figure:
    """Captured sensitivity share of every planned module, grouped by role (x) and student layer."""
    roles = [r for r in MODULE_ORDER + EMBED_ROLES if any(m.role == r for m in plan.modules)]
    height = height or 320
    fig = _fig(height, title="Captured share of each teacher matrix's sensitivity", barmode="group",
               legend=dict(orientation="h", y=-0.2, title="student layer"))
    by_layer: dict = {}
    for m in plan.modules:
        by_layer.setdefault(m.student_layer, []).append(m)
    for (layer, mods), color in zip(by_layer.items(), distinct_colors(len(by_layer))):
        fig.add_trace(go.Bar(x=[m.role for m in mods], y=[m.captured for m in mods], marker_color=color,
                             name="embeddings" if layer is None else f"S{layer}",
                             customdata=[[m.student_module, m.teacher_param] for m in mods],
                             hovertemplate="%{customdata[0]}<br>from %{customdata[1]}<br>captured %{y:.1%}"
                                           "<extra></extra>"))
    fig.update_xaxes(categoryorder="array", categoryarray=roles)
    fig.update_yaxes(tickformat=".0%", range=[0, 1])
    return fig


def similarity_heatmap(matrix, layer_map: list | None = None, title: str = "Layer similarity (linear CKA)",
                       height: int | None = None) -> go.Figure:
    """Teacher (rows) x student (columns) similarity; the current mapping is marked with circles."""
    z = np.asarray(matrix, dtype=np.float64)
    n_t, n_s = z.shape
    height = height or max(300, min(900, 90 + 24 * n_t))
    fig = _fig(height, title=title)
    fig.add_trace(go.Heatmap(z=z, x=list(range(n_s)), y=list(range(n_t)), zmin=0, zmax=1, colorscale=SEQUENTIAL,
                             colorbar=dict(title=dict(text="CKA", side="right"), thickness=12),
                             hovertemplate="teacher %{y} · student %{x}: %{z:.3f}<extra></extra>"))
    if layer_map:
        pts = [(j, t) for j, t in enumerate(layer_map) if t is not None]
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers",
                                 marker=dict(symbol="circle-open", size=14, color=SELECT_COLOR, line=dict(width=3)),
                                 name="current mapping", hovertemplate="mapped: S%{x} <- T%{y}<extra></extra>"))
    fig.update_xaxes(title="student layer", dtick=1, side="top")
    fig.update_yaxes(title="teacher layer", dtick=1 if n_t <= 40 else None, autorange="reversed")
    fig.update_layout(showlegend=False, margin=dict(t=90))
    return fig


# ---------------------------------------------------------------------------------------
# Export


def spectrum_figure(manifest: dict, modules: list[str] | None = None, height: int = 380) -> go.Figure:
    """Singular values of each exported module's extracted matrix (log scale), rank r marked."""
    rank = manifest["rank"]
    mods = manifest["modules"]
    names = modules if modules is not None else list(mods)
    fig = _fig(height, title=f"Singular-value spectra (first {max((len(mods[n]['singular_values']) for n in names), default=0)}); "
                             f"rank r = {rank} kept", legend=dict(font=dict(size=9)))
    for name, color in zip(names, distinct_colors(len(names))):
        sv = mods[name]["singular_values"]
        fig.add_trace(go.Scatter(x=list(range(1, len(sv) + 1)), y=sv, mode="lines", name=_short(name),
                                 line=dict(color=color),
                                 hovertemplate=f"{name}<br>σ%{{x}} = %{{y:.4g}}<extra></extra>"))
    fig.add_vline(x=rank + 0.5, line=dict(color=SELECT_COLOR, dash="dash"), annotation_text=f"r = {rank}")
    fig.update_yaxes(type="log", title="singular value")
    fig.update_xaxes(title="index")
    fig.update_layout(showlegend=len(names) <= 24)
    return fig


def energy_figure(manifest: dict, height: int = 340) -> go.Figure:
    """Per module: energy kept at rank r and captured sensitivity share, as grouped bars."""
    mods = manifest["modules"]
    names = list(mods)
    fig = _fig(height, title=f"Energy kept at rank {manifest['rank']} and captured sensitivity, per module",
               barmode="group", legend=dict(orientation="h", y=1.1))
    short = [_short(n) for n in names]
    fig.add_trace(go.Bar(x=short, y=[mods[n]["energy"] for n in names], name="energy at rank r",
                         marker_color="#1e88e5", hovertemplate="%{x}: %{y:.1%}<extra>energy</extra>"))
    fig.add_trace(go.Bar(x=short, y=[mods[n]["captured"] for n in names], name="captured sensitivity",
                         marker_color="#fb8c00", hovertemplate="%{x}: %{y:.1%}<extra>captured</extra>"))
    fig.update_yaxes(tickformat=".0%", range=[0, 1])
    fig.update_xaxes(tickangle=-45)
    return fig


def index_ranges(indices, limit: int = 24) -> str:
    """Ascending indices as runs, e.g. [0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8" (at most `limit` runs shown)."""
    runs = []
    for i in map(int, indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit])
    return text + (f", … ({len(runs) - limit} more runs)" if len(runs) > limit else "")


def _short(module: str) -> str:
    """'model.layers.3.self_attn.q_proj' -> 'L3.q_proj'."""
    parts = module.split(".")
    if "layers" in parts:
        i = parts.index("layers")
        if i + 1 < len(parts):
            return f"L{parts[i + 1]}.{parts[-1]}"
    return parts[-1]


# ---------------------------------------------------------------------------------------
# Fine-tune

METHOD_ORDER = ("vanilla", "pissa", "pkt")
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
    n_points = 0
    for i, s in enumerate(series):
        color = s.get("color") or RUN_PALETTE[i % len(RUN_PALETTE)]
        shown = False
        for k, (key, title) in enumerate(CURVE_PANELS):
            x, y = curve_points(s.get("rows") or [], key)
            if not x:
                continue
            n_points += len(x)
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
    fig.update_yaxes(tickformat=".0%", rangemode="tozero", row=2, col=2)
    fig.update_yaxes(exponentformat="e", row=1, col=2)
    if not n_points:
        fig.add_annotation(text="no metrics yet: the first point appears after the first optimizer step",
                           x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False)
    return fig


def _pct(v) -> str:
    return "–" if v is None else f"{v:.1%}"


def comparison_rows(results: dict) -> list[dict]:
    """One table row per method from `jobs.group_results`: finished/total runs, final accuracy
    mean ± std (sample std), min, max, final eval loss, and the runs' states."""
    rows = []
    methods = results.get("methods", {})
    for method in [m for m in METHOD_ORDER if m in methods] + [m for m in methods if m not in METHOD_ORDER]:
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
    order = [m for m in METHOD_ORDER if m in methods] + [m for m in methods if m not in METHOD_ORDER]
    n = max((methods[m]["accuracy"]["n"] for m in order), default=0)
    fig = _fig(height, title=f"Final eval accuracy per method (mean ± std over {n} seed{'s' if n != 1 else ''})",
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
