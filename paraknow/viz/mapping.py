"""Layer-map and plan charts: the teacher -> student diagram, the editable map table, the captured share
per module, and layer similarity."""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from ..core.architecture import EMBED_ROLES
from ..core.errors import ParaknowError
from .common import MODULE_ORDER, SELECT_COLOR, SEQUENTIAL, distinct_colors, fit_to_cells, new_figure


def mapping_diagram(layer_map: list, n_teacher: int, layer_scores: list[float] | None = None,
                    height: int | None = None) -> go.Figure:
    """Teacher layers (left) -> student layers (right); lines show which teacher layer feeds which."""
    n_student = len(layer_map)
    height = height or max(300, min(900, 60 + 24 * max(n_teacher, n_student)))
    span = max(n_teacher - 1, 1)
    ys = [j * span / max(n_student - 1, 1) if n_student > 1 else span / 2 for j in range(n_student)]
    fig = new_figure(height, title="Layer mapping: teacher -> student", showlegend=False)
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
    fig = new_figure(height, title="Captured share of each teacher matrix's sensitivity", barmode="group",
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
    fig = new_figure(height, title=title)
    fig.add_trace(go.Heatmap(z=z, x=list(range(n_s)), y=list(range(n_t)), zmin=0, zmax=1, colorscale=SEQUENTIAL,
                             colorbar=dict(title=dict(text="CKA", side="right"), thickness=12),
                             hovertemplate="teacher %{y} · student %{x}: %{z:.3f}<extra></extra>"))
    if layer_map:
        pts = [(j, t) for j, t in enumerate(layer_map) if t is not None]
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers",
                                 marker=dict(symbol="circle-open", size=14, color=SELECT_COLOR, line=dict(width=3)),
                                 name="current mapping", hovertemplate="mapped: S%{x} <- T%{y}<extra></extra>"))
    fig.update_xaxes(title="student layer", dtick=1, side="top")
    fig.update_yaxes(title="teacher layer", dtick=1 if n_t <= 40 else None)
    fit_to_cells(fig, n_s, n_t)  # the mapping's circles would pad an automatic range
    fig.update_layout(showlegend=False, margin=dict(t=90))
    return fig


COMPARE_METRICS = {"lift": ("lift over random", "{:.2f}×"), "captured": ("captured share", "{:.0%}"),
                   "energy": ("energy at rank r", "{:.0%}"), "cos": ("cos(s·BA, W_S)", "{:+.3f}")}


def compare_heat_table(rows: list[dict], metric: str = "lift", current: tuple | None = None) -> go.Figure:
    """The granularity comparison as small multiples, one heat-table per coherent level: structures
    (rows) x layer strategies (columns), coloured and labelled by `metric` (COMPARE_METRICS); a
    combination that cannot be planned is blank, the `current` (structure, layers, coherent) is outlined."""
    from plotly.subplots import make_subplots

    label, fmt = COMPARE_METRICS[metric]
    levels = list(dict.fromkeys(r["coherent"] for r in rows))
    structures = list(dict.fromkeys(r["structure"] for r in rows))
    strategies = list(dict.fromkeys(r["layers"] for r in rows))
    values = [r[metric] for r in rows if r.get(metric) is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    fig = make_subplots(1, len(levels), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[f"coherent: {level}" for level in levels])
    for col, level in enumerate(levels, 1):
        cell = {(r["structure"], r["layers"]): r.get(metric) for r in rows if r["coherent"] == level}
        z = [[cell.get((s, lay)) for lay in strategies] for s in structures]  # [structure, strategy]
        text = [["" if v is None else fmt.format(v) for v in line] for line in z]
        fig.add_trace(go.Heatmap(
            z=z, x=strategies, y=structures, text=text, texttemplate="%{text}", zmin=lo, zmax=hi,
            colorscale=SEQUENTIAL, showscale=col == len(levels), hoverongaps=False,
            colorbar=dict(title=dict(text=label), thickness=10),
            hovertemplate=f"%{{y}} × %{{x}} (coherent {level})<br>{label}: %{{text}}<extra></extra>"), 1, col)
        if current and current[2] == level and current[0] in structures and current[1] in strategies:
            x, y = strategies.index(current[1]), structures.index(current[0])
            fig.add_shape(type="rect", x0=x - 0.5, x1=x + 0.5, y0=y - 0.5, y1=y + 0.5, row=1, col=col,
                          line=dict(color=SELECT_COLOR, width=3))
    fig.update_yaxes(autorange="reversed", automargin=True)
    fig.update_xaxes(tickangle=-30, automargin=True)
    fig.update_layout(height=90 + 46 * len(structures), margin=dict(l=10, r=10, t=70, b=10),
                      title=dict(text=f"Granularity comparison: {label} per structure × layer strategy", y=0.98))
    return fig
