"""What every chart shares: colours, the module order, a figure with the app's margins, number
formatting, log scaling."""
from __future__ import annotations

import math

import numpy as np
import plotly.colors
import plotly.graph_objects as go

from ..core.architecture import ATTN_ROLES, FFN_ROLES

MODULE_ORDER = ATTN_ROLES + FFN_ROLES
SEQUENTIAL = "Viridis"
DIVERGING = "RdBu_r"
DONE_COLOR, TODO_COLOR, NEXT_COLOR = "#2e7d32", "#b0bec5", "#f9a825"
SELECT_COLOR = "#ff1744"
HEAD_COLOR = "#e0e0e0"  # attention-head boundaries on the drill-down


def new_figure(height: int, **layout) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), **layout)
    return fig


def fit_to_cells(fig: go.Figure, n_columns: int, n_rows: int) -> go.Figure:
    """Axis ranges that end at a heatmap's outer cells (row 0 on top) and no zero line: markers drawn
    over the cells (click targets, the current mapping) would pad an automatic range with an empty band,
    and the zero line would cross the first row and column."""
    fig.update_xaxes(range=[-0.5, n_columns - 0.5], zeroline=False)
    fig.update_yaxes(range=[n_rows - 0.5, -0.5], zeroline=False)
    return fig


def distinct_colors(n: int) -> list[str]:
    """n colours that stay distinct past plotly's 10-colour cycle (a sampled rainbow scale)."""
    if n <= 10:
        return plotly.colors.qualitative.Plotly[:n]
    return plotly.colors.sample_colorscale("Turbo", [0.05 + 0.9 * i / (n - 1) for i in range(n)])


def log10_floored(z: np.ndarray) -> np.ndarray:
    """log10 with non-positive entries floored just below the smallest positive value."""
    z = np.asarray(z, dtype=np.float64)
    positive = z[np.isfinite(z) & (z > 0)]
    floor = positive.min() / 10 if positive.size else 1e-30
    out = np.log10(np.where(np.isfinite(z), np.maximum(z, floor), np.nan))
    return out


def fmt_value(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.4g}"
