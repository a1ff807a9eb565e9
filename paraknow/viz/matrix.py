"""One weight matrix's sensitivity, pooled to at most ~256 x 256 cells for display, with the selected
block and head boundaries overlaid ([out (rows), in (columns)] in teacher index coordinates)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..core.errors import ParaknowError
from .common import HEAD_COLOR, SELECT_COLOR, SEQUENTIAL, log10_floored


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
    shown = log10_floored(p.values) if log else p.values
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
