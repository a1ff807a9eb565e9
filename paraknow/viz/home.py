"""The home page's pipeline chart."""
from __future__ import annotations

import plotly.graph_objects as go

from .common import DONE_COLOR, NEXT_COLOR, TODO_COLOR, new_figure

PIPELINE_STEPS = ("Models", "Sensitivity", "Mapping", "Export", "Fine-tune")


def pipeline_figure(done: dict[str, bool] | None = None) -> go.Figure:
    """The PKT pipeline as five boxes with arrows; finished steps green, the next one amber."""
    done = done or {}
    next_step = next((s for s in PIPELINE_STEPS if not done.get(s)), None)
    colors = [DONE_COLOR if done.get(s) else NEXT_COLOR if s == next_step else TODO_COLOR
              for s in PIPELINE_STEPS]
    details = ("teacher + student", "|θ·∇L| on seeds", "layers + submatrices",
               "SVD -> LoRA init", "student LoRA")
    xs = list(range(len(PIPELINE_STEPS)))
    fig = new_figure(150, showlegend=False, plot_bgcolor="rgba(0,0,0,0)", paper_bgcolor="rgba(0,0,0,0)")
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
