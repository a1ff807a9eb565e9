"""The charts only the lesson draws (the others are paraknow.viz builders), and presentation scaling."""
from __future__ import annotations

import plotly.graph_objects as go

from .state import GROUP_NAMES, PRESENTATION_SCALE, pct


def _bars(title: str, height: int = 340, **layout) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=50, b=10), **layout)
    return fig


def parameters_figure(parts: dict[str, dict[str, float]]) -> go.Figure:
    """Parameters (millions) of each model split into attention / FFN / embeddings / norms."""
    fig = _bars("Parameters of each model, by part (millions)", barmode="stack",
                legend=dict(orientation="h", y=-0.15))
    colors = {"attention": "#1e88e5", "ffn": "#fb8c00", "embeddings": "#8e24aa", "other": "#9e9e9e"}
    for group in GROUP_NAMES:
        fig.add_trace(go.Bar(x=list(parts), y=[parts[m][group] / 1e6 for m in parts], name=GROUP_NAMES[group],
                             marker_color=colors[group],
                             hovertemplate=f"%{{x}}: %{{y:.3f}} M {GROUP_NAMES[group]}<extra></extra>"))
    fig.update_yaxes(title="parameters (M)")
    return fig


def structure_figure(rows: list[dict]) -> go.Figure:
    """Mean captured share of each structure (bars) against the share of entries taken (line)."""
    fig = _bars("Share of each teacher matrix's sensitivity captured by a student-sized part",
                legend=dict(orientation="h", y=-0.3))
    names = [r["structure"] for r in rows]
    fig.add_trace(go.Bar(x=names, y=[r["captured"] for r in rows], name="captured (mean over matrices)",
                         marker_color=["#e53935" if r["structure"] == "submatrix" else "#78909c" for r in rows],
                         text=[pct(r["captured"]) for r in rows], textposition="outside",
                         hovertemplate="%{x}: %{y:.1%} captured<extra></extra>"))
    fig.add_trace(go.Scatter(x=names, y=[r["area"] for r in rows], mode="lines+markers", name="entries taken",
                             line=dict(color="#263238", dash="dash"),
                             hovertemplate="%{x}: %{y:.1%} of the entries<extra></extra>"))
    fig.update_yaxes(tickformat=".0%", range=[0, 1.05])
    return fig


def token_loss_figure(outputs: list) -> go.Figure:
    """Per-token cross-entropy of the reference answer under each model (grouped bars)."""
    fig = _bars("Loss of each reference token (nats; lower = the model expects it)", barmode="group",
                legend=dict(orientation="h", y=-0.35))
    for out, color in zip(outputs, ("#757575", "#1e88e5", "#e53935")):
        if not out.losses:
            continue
        fig.add_trace(go.Bar(x=list(range(len(out.losses))), y=[t.loss for t in out.losses], name=out.name,
                             marker_color=color, customdata=[[t.token] for t in out.losses],
                             hovertemplate="token %{x} %{customdata[0]!r}: %{y:.3f} nats<extra></extra>"))
    ticks = [t.token.replace("\n", "⏎") for t in outputs[0].losses] if outputs and outputs[0].losses else []
    fig.update_xaxes(tickvals=list(range(len(ticks))), ticktext=ticks, tickangle=0)
    fig.update_yaxes(title="nats")
    return fig


def presentation(figure: go.Figure, scale: float = PRESENTATION_SCALE) -> go.Figure:
    """A copy of `figure` with fonts and height scaled up, for a projector."""
    fig = go.Figure(figure)
    height = fig.layout.height or 400
    size = int(12 * scale)
    fig.update_layout(height=int(height * scale), font=dict(size=size), title_font=dict(size=int(17 * scale)),
                      legend_font_size=size, hoverlabel_font_size=size)
    fig.update_xaxes(tickfont_size=size, title_font_size=size)  # explicit: the app's chart theme sets its own
    fig.update_yaxes(tickfont_size=size, title_font_size=size)
    fig.update_annotations(font_size=size)
    return fig
