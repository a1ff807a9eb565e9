"""Export charts: singular-value spectra and captured energy from an export's manifest."""
from __future__ import annotations

import plotly.graph_objects as go

from .common import SELECT_COLOR, distinct_colors, new_figure


def spectrum_figure(manifest: dict, modules: list[str] | None = None, height: int = 380) -> go.Figure:
    """Singular values of each exported module's extracted matrix (log scale), rank r marked."""
    rank = manifest["rank"]
    mods = manifest["modules"]
    names = modules if modules is not None else list(mods)
    fig = new_figure(height, title=f"Singular-value spectra (first {max((len(mods[n]['singular_values']) for n in names), default=0)}); "
                             f"rank r = {rank} kept", legend=dict(font=dict(size=9)))
    for name, color in zip(names, distinct_colors(len(names))):
        sv = mods[name]["singular_values"]
        fig.add_trace(go.Scatter(x=list(range(1, len(sv) + 1)), y=sv, mode="lines", name=short_module_name(name),
                                 line=dict(color=color),
                                 hovertemplate=f"{name}<br>σ%{{x}} = %{{y:.4g}}<extra></extra>"))
    fig.add_vline(x=rank + 0.5, line=dict(color=SELECT_COLOR, dash="dash"), annotation_text=f"r = {rank}")
    fig.update_yaxes(type="log", title="singular value", dtick="D2", tickformat="~g")  # 0.2 0.5 1 2 5, not bare digits
    fig.update_xaxes(title="index")
    fig.update_layout(showlegend=len(names) <= 24)
    return fig


def energy_figure(manifest: dict, height: int = 340) -> go.Figure:
    """Per module: energy kept at rank r and captured sensitivity share, as grouped bars."""
    mods = manifest["modules"]
    names = list(mods)
    fig = new_figure(height, title=f"Energy kept at rank {manifest['rank']} and captured sensitivity, per module",
               barmode="group", legend=dict(orientation="h", y=1.1))
    short = [short_module_name(n) for n in names]
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


def short_module_name(module: str) -> str:
    """'model.layers.3.self_attn.q_proj' -> 'L3.q_proj'."""
    parts = module.split(".")
    if "layers" in parts:
        i = parts.index("layers")
        if i + 1 < len(parts):
            return f"L{parts[i + 1]}.{parts[-1]}"
    return parts[-1]
