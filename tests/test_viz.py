"""paraknow.viz figure builders and paraknow.transfer.similarity (linear CKA), without a browser."""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from tiny import TOKENIZER, tiny_llama

from paraknow import viz
from paraknow.core.architecture import describe
from paraknow.core.errors import ParaknowError
from paraknow.extract import block_selection, select
from paraknow.transfer.plan import TransferConfig, plan_transfer
from paraknow.transfer.sensitivity import magnitude
from paraknow.transfer.sensitivity_map import module_table
from paraknow.transfer.similarity import cka_matrix, layer_similarity, linear_cka


def _table(n_layers=3):
    rows = []
    for layer in range(n_layers):
        for k, module in enumerate(viz.MODULE_ORDER):
            rows.append({"layer": layer, "module": module, "sum": float(1 + layer * 10 + k),
                         "mean": float(layer + k) / 100, "numel": 100, "param": f"model.layers.{layer}.{module}"})
    return rows


def test_sensitivity_heatmap_has_clickable_cells():
    table = _table(3)
    fig = viz.sensitivity_heatmap(table, "sum", selected=(1, "v_proj"))
    assert isinstance(fig, go.Figure)
    heat, cells = fig.data[0], fig.data[1]
    assert heat.type == "heatmap" and np.asarray(heat.z).shape == (3, 7)
    assert cells.type == "scatter" and len(cells.customdata) == 3 * 7
    assert [1, "v_proj"] in [list(c) for c in cells.customdata]
    assert cells.marker.opacity == 0  # invisible, but clickable
    assert any(s.type == "rect" for s in fig.layout.shapes)  # the selected cell is framed
    z, layers, modules = viz.module_grid(table, "mean")
    assert layers == [0, 1, 2] and modules == list(viz.MODULE_ORDER)
    assert z[2, 1] == pytest.approx(0.03)
    log = viz.sensitivity_heatmap(table, "mean", log=True)
    assert np.nanmax(np.asarray(log.data[0].z)) < 0  # log10 of values < 1
    with pytest.raises(ParaknowError):
        viz.module_grid(table, "median")


def test_the_heatmap_module_labels_keep_clear_of_the_title():
    fig = viz.sensitivity_heatmap(_table(3), "sum")
    axis, layout = fig.layout.xaxis, fig.layout
    assert axis.side == "top" and axis.tickangle == -30 and axis.automargin is False  # never re-angled on a redraw
    longest = max(len(m) for m in axis.ticktext)
    assert layout.margin.t >= 50 + 3.5 * longest  # the title (pinned to the top) above the labels
    assert (layout.title.yref, layout.title.yanchor) == ("container", "top")


def test_layer_and_group_figures():
    fig = viz.layer_bars([1.0, 3.0, 0.0, 4.0], highlight=[1, 3])
    assert fig.data[0].type == "bar" and sum(fig.data[0].y) == pytest.approx(1.0)
    shares = {"attention": 0.4, "ffn": 0.5, "embeddings": 0.05, "other": 0.05}
    assert len(viz.group_share_figure(shares).data) == 4
    assert len(viz.pipeline_figure({"Models": True}).layout.shapes) == len(viz.PIPELINE_STEPS)


def test_pool_for_display_shapes_and_marginals():
    m = torch.arange(12 * 10, dtype=torch.float32).reshape(12, 10)
    p = viz.pool_for_display(m, 4, 5)
    assert p.values.shape == (4, 5) and p.shape == (12, 10)
    assert p.values[0, 0] == pytest.approx(float(m[:3, :2].mean()))
    assert p.row_centres.tolist() == [1.0, 4.0, 7.0, 10.0]
    assert p.row_marginal[0] == pytest.approx(float(m[:3].sum(1).mean()))
    assert p.col_marginal[-1] == pytest.approx(float(m[:, 8:].sum(0).mean()))
    peak = viz.pool_for_display(m, 4, 5, reduce="max")
    assert peak.values[0, 0] == float(m[:3, :2].max()) and peak.row_marginal[0] == p.row_marginal[0]
    with pytest.raises(ParaknowError):
        viz.pool_for_display(m, reduce="median")
    small = viz.pool_for_display(torch.ones(3, 4))  # smaller than the display: unchanged
    assert small.values.shape == (3, 4)


def test_matrix_figure_block_and_mask_overlays():
    scores = torch.rand(40, 30)
    block = block_selection(5, 7, 10, 12, shape=(40, 30))
    fig = viz.matrix_figure(scores, "w", selection=block)
    types = [t.type for t in fig.data]
    assert types == ["scatter", "heatmap", "scatter"]  # column marginal, heatmap, row marginal
    rect = [s for s in fig.layout.shapes if s.type == "rect"][0]
    assert (rect.x0, rect.y0) == (6.5, 4.5) and (rect.x1, rect.y1) == (18.5, 14.5)
    rowcol = select("rowcol", scores, 10, 12)
    fig = viz.matrix_figure(scores, "w", selection=rowcol, log=True)
    assert [t.type for t in fig.data][-1] == "heatmap"  # the mask overlay
    mask = np.asarray(fig.data[-1].z)
    assert mask.sum() == pytest.approx(10 * 12)  # no pooling at this size: exact 0/1 mask
    elements = select("elements", scores, 10, 12)
    m = viz.pooled_mask(elements, (40, 30), 8, 6)
    assert m.shape == (8, 6) and m.mean() == pytest.approx(120 / 1200)


def test_drilldown_pools_a_llama_sized_matrix_to_block_means():
    """A [13824, 5120] matrix becomes 256 x 256 cells of 54 x 20 entries each (its speed: bench_drilldown)."""
    scores = torch.rand(13824, 5120)
    fig = viz.matrix_figure(scores, "mlp.gate_proj", selection=block_selection(100, 200, 11008, 4096))
    z = np.asarray(fig.data[1].z)
    assert z.shape == (256, 256)
    assert len(fig.data[0].x) == 256 and len(fig.data[2].y) == 256
    for i, j in ((0, 0), (17, 203), (255, 255)):
        assert z[i, j] == pytest.approx(float(scores[54 * i: 54 * (i + 1), 20 * j: 20 * (j + 1)].double().mean()),
                                        rel=1e-5)


def test_compare_figures_and_task_specific_layers():
    a, b = _table(3), _table(3)
    for r in b:
        if r["layer"] == 2:
            r["sum"] *= 5
    diff = viz.compare_figure(a, b, "arith", "facts", mode="diff")
    z = np.asarray(diff.data[0].z)
    assert z.shape == (3, 7) and z[2].sum() > 0 and z[0].sum() < 0
    assert np.nansum(z) == pytest.approx(0.0, abs=1e-12)
    side = viz.compare_figure(a, b, "arith", "facts", mode="side")
    assert [t.type for t in side.data] == ["heatmap", "heatmap"]
    with pytest.raises(ParaknowError):
        viz.compare_figure(a, b, "a", "b", mode="overlay")
    la = [1.0, 1.0, 1.0]
    lb = [1.0, 1.0, 4.0]
    top = viz.task_specific_layers(la, lb, top=1)
    assert top[0][0] == 2 and top[0][1] > 0
    assert len(viz.layer_share_diff(la, lb, "a", "b").data) == 2


def test_mapping_table_round_trip_and_errors():
    layer_map = [0, 3, None, 5]
    rows = viz.mapping_table(layer_map, layer_scores=[1.0] * 6)
    assert [r[viz.TABLE_TEACHER] for r in rows] == ["0", "3", "-", "5"]
    assert viz.table_to_mapping(rows, 4, 6) == layer_map
    edited = [dict(r) for r in rows]
    edited[2][viz.TABLE_TEACHER] = 1
    edited[0][viz.TABLE_TEACHER] = 2.0
    edited[3][viz.TABLE_TEACHER] = float("nan")
    assert viz.table_to_mapping(edited, 4, 6) == [2, 3, 1, None]
    for bad, what in (("9", "does not exist"), ("x", "not a teacher layer"), (1.5, "whole")):
        broken = [dict(r) for r in rows]
        broken[1][viz.TABLE_TEACHER] = bad
        with pytest.raises(ParaknowError, match=what):
            viz.table_to_mapping(broken, 4, 6)
    with pytest.raises(ParaknowError, match="one row per student layer"):
        viz.table_to_mapping(rows[:3], 4, 6)


def test_mapping_diagram_and_similarity_heatmap():
    fig = viz.mapping_diagram([0, 2, None], n_teacher=4, layer_scores=[4.0, 1.0, 3.0, 2.0])
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(lines) == 2  # one per mapped student layer
    nodes = [t for t in fig.data if t.mode == "markers+text"]
    assert len(nodes[0].x) == 4 and len(nodes[1].x) == 3
    sim = viz.similarity_heatmap(np.eye(4, 3), [0, 2, None])
    assert sim.data[0].type == "heatmap" and len(sim.data[1].x) == 2


def _plan_and_scores():
    teacher, student = tiny_llama(layers=3, hidden=64, ffn=128, seed=1), tiny_llama(layers=2, hidden=32, ffn=64, seed=2)
    t_info, s_info = describe(teacher), describe(student)
    scores = magnitude(teacher)
    return plan_transfer(t_info, s_info, scores, TransferConfig(rank=4, alpha=4, layers="first")), scores


def test_plan_rows_captured_bars_and_export_figures():
    plan, scores = _plan_and_scores()
    rows = viz.plan_rows(plan)
    assert len(rows) == len(plan.modules) == 2 * 7
    assert all(0 < r["captured"] <= 1 and r["block at"].startswith("(") for r in rows)
    bars = viz.captured_bars(plan)
    assert len(bars.data) == 2  # one bar group per student layer
    table = module_table(scores)
    assert viz.sensitivity_heatmap(table).data[0].z is not None
    manifest = {"rank": 4, "modules": {
        m.student_module: {"role": m.role, "energy": 0.5, "captured": m.captured,
                           "singular_values": sorted(np.random.rand(16).tolist(), reverse=True)}
        for m in plan.modules}}
    spec = viz.spectrum_figure(manifest)
    assert len(spec.data) == len(plan.modules)
    assert len(viz.spectrum_figure(manifest, modules=[plan.modules[0].student_module]).data) == 1
    energy = viz.energy_figure(manifest)
    assert [t.name for t in energy.data] == ["energy at rank r", "captured sensitivity"]
    assert viz.short_module_name("model.layers.3.self_attn.q_proj") == "L3.q_proj"


# ---- linear CKA ----------------------------------------------------------------------


def test_linear_cka_identity_orthogonal_and_scale_invariance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g, dtype=torch.float64)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    y = torch.randn(200, 8, generator=g, dtype=torch.float64) + x[:, :8]
    base = linear_cka(x, y)
    assert 0 < base < 1
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-10)  # orthogonal transform
    assert linear_cka(3.7 * x, y) == pytest.approx(base, abs=1e-10)  # isotropic scaling
    assert linear_cka(x + 5.0, 0.1 * y) == pytest.approx(base, abs=1e-10)  # translation + scaling
    assert linear_cka(x, torch.randn(200, 16, generator=g, dtype=torch.float64)) < 0.2
    m = cka_matrix([x, x @ q], [y, x])  # the Gram form agrees with the feature form
    assert m[0, 0] == pytest.approx(base, abs=1e-6) and m[1, 1] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ParaknowError):
        linear_cka(x, y[:10])


def test_layer_similarity_of_a_model_with_itself(seed_records):
    model = tiny_llama(layers=3, hidden=64, ffn=128, seed=3)
    matrix, info = layer_similarity(model, model, TOKENIZER, seed_records, max_tokens=200)
    assert matrix.shape == (3, 3) and info["inputs"] == "tokens" and info["n"] <= 200
    assert np.allclose(np.diag(matrix), 1.0, atol=1e-4)
    student = tiny_llama(layers=2, hidden=32, ffn=64, seed=4)
    matrix, _ = layer_similarity(model, student, TOKENIZER, seed_records, max_samples=4)
    assert matrix.shape == (3, 2) and np.all((matrix >= 0) & (matrix <= 1))
    with pytest.raises(ParaknowError):
        layer_similarity(model, student, TOKENIZER, [])
    assert not math.isnan(float(matrix.sum()))


def test_distinct_colors_do_not_repeat_past_ten():
    for n in (1, 10, 15, 32):
        colors = viz.distinct_colors(n)
        assert len(colors) == n and len(set(colors)) == n


def test_log_spectra_label_values_and_a_one_point_run_gets_whole_steps_from_zero():
    manifest = {"rank": 4, "modules": {"m": {"role": "q_proj", "singular_values": [2.0, 0.9, 0.5, 0.3, 0.1]}}}
    axis = viz.spectrum_figure(manifest).layout.yaxis
    assert axis.type == "log" and axis.dtick == "D2" and axis.tickformat == "~g"  # 0.2, 0.5, 1, 2: no bare '9 8 7'
    one = viz.run_curves([{"label": "run", "rows": [{"step": 1, "loss": 2.5, "lr": 1e-4}]}])
    for name in ("xaxis", "xaxis2", "xaxis3", "xaxis4"):
        assert list(one.layout[name].range) == [0, 1.5] and one.layout[name].dtick == 1
    many = viz.run_curves([{"label": "run", "rows": [{"step": s, "loss": 1.0} for s in range(1, 200)]}])
    assert many.layout.xaxis.range is None  # long runs keep plotly's own range


def test_eval_panels_say_when_no_evaluation_has_run_yet():
    def notes(fig):
        return {(a.xref, a.text.split(":")[0]) for a in fig.layout.annotations if a.text.startswith("no ")}

    training = viz.run_curves([{"label": "run", "rows": [{"step": 1, "loss": 2.5, "lr": 1e-4}]}])
    assert notes(training) == {("x3 domain", "no evaluation yet"), ("x4 domain", "no evaluation yet")}
    evaluated = viz.run_curves([{"label": "run", "rows": [{"step": 1, "loss": 2.5, "lr": 1e-4},
                                                          {"step": 1, "eval_loss": 2.0, "eval_accuracy": 0.1}]}])
    assert notes(evaluated) == set()
    assert notes(viz.run_curves([])) == {("paper", "no metrics yet")}


def test_the_comparison_heat_table_puts_each_row_in_its_cell_and_outlines_the_current_choice():
    rows = [{"structure": s, "layers": lay, "coherent": co, "lift": 1 + i / 10, "captured": 0.1 * (i % 5)}
            for i, (s, lay, co) in enumerate((s, lay, co) for co in ("off", "layer") for s in ("submatrix", "heads")
                                             for lay in ("first", "last", "sensitivity"))]
    rows[4]["lift"] = None  # a combination that cannot be planned
    fig = viz.compare_heat_table(rows, "lift", current=("heads", "last", "layer"))
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]  # one panel per coherent level
    off, layer = fig.data
    assert list(off.y) == ["submatrix", "heads"] and list(off.x) == ["first", "last", "sensitivity"]
    assert off.z[1][0] == 1.3 and off.z[1][1] is None and off.text[1][1] == ""
    assert layer.z[1][1] == rows[10]["lift"] and layer.text[1][1] == f"{rows[10]['lift']:.2f}×"
    (box,) = fig.layout.shapes
    assert (box.x0, box.y0, box.xref) == (0.5, 0.5, "x2")  # strategy 1, structure 1, in the second panel
    assert viz.compare_heat_table(rows, "captured").data[0].text[0][1] == "10%"


def test_the_heatmap_fills_its_plot_without_padding_or_a_zero_line():
    """Fixed ranges: the invisible click markers would otherwise pad the grid with an empty band, and
    plotly's zero line would cross the first column."""
    fig = viz.sensitivity_heatmap(_table(3), "sum")
    n_modules = len(fig.layout.xaxis.tickvals)
    assert tuple(fig.layout.xaxis.range) == (-0.5, n_modules - 0.5)
    assert tuple(fig.layout.yaxis.range) == (2.5, -0.5)  # layer 0 on top
    assert fig.layout.xaxis.zeroline is False and fig.layout.yaxis.zeroline is False


def test_the_similarity_heatmap_fills_its_plot_too():
    """Its mapping circles padded the teacher axis the way the click markers padded the sensitivity grid."""
    fig = viz.similarity_heatmap(np.full((8, 4), 0.5), [0, 3, 5, 7])
    assert tuple(fig.layout.xaxis.range) == (-0.5, 3.5) and tuple(fig.layout.yaxis.range) == (7.5, -0.5)
    assert fig.layout.xaxis.zeroline is False and fig.layout.yaxis.zeroline is False
