"""Plotly figure builders and small table helpers for the app's pages (pure: no streamlit).

Every builder takes plain data (lists, dicts, tensors, the library's dataclasses) and
returns a `plotly.graph_objects.Figure`, so the pages stay thin and everything here is
testable without a browser. Big matrices are pooled to at most ~256 x 256 cells before
they become a figure (`pool_for_display`).

Conventions: layers run top to bottom (layer 0 first), weight matrices are drawn as
[out (rows), in (columns)] in *teacher index* coordinates, so overlays such as the
selected block can be placed with the indices the library uses.

One module per chart family; the pages import them all from here (`from paraknow import viz`):
common (colours, figure defaults), home, sensitivity, matrix, mapping, spectrum, runs.
"""
from .common import (DIVERGING, DONE_COLOR, HEAD_COLOR, MODULE_ORDER, NEXT_COLOR, SELECT_COLOR, SEQUENTIAL,
    TODO_COLOR, distinct_colors)
from .home import PIPELINE_STEPS, pipeline_figure
from .mapping import (COMPARE_METRICS, TABLE_STUDENT, TABLE_TEACHER, UNMAPPED, captured_bars, compare_heat_table,
    mapping_diagram, mapping_table, plan_rows, similarity_heatmap, table_to_mapping)
from .matrix import Pooled, matrix_figure, pool_for_display, pooled_mask
from .runs import (CURVE_PANELS, METHOD_COLORS, METHOD_NAMES, RUN_PALETTE, comparison_figure, comparison_rows,
    curve_points, run_curves)
from .sensitivity import (compare_figure, group_share_figure, layer_bars, layer_share_diff, module_grid,
    sensitivity_heatmap, share_grid, task_specific_layers)
from .spectrum import energy_figure, index_ranges, short_module_name, spectrum_figure

__all__ = ["COMPARE_METRICS", "CURVE_PANELS", "DIVERGING", "DONE_COLOR", "HEAD_COLOR", "METHOD_COLORS", "METHOD_NAMES", "MODULE_ORDER",
           "NEXT_COLOR", "PIPELINE_STEPS", "Pooled", "RUN_PALETTE", "SELECT_COLOR", "SEQUENTIAL", "TABLE_STUDENT",
           "TABLE_TEACHER", "TODO_COLOR", "UNMAPPED", "captured_bars", "compare_figure", "comparison_figure",
           "comparison_rows", "compare_heat_table", "curve_points", "distinct_colors", "energy_figure", "group_share_figure",
           "index_ranges", "layer_bars", "layer_share_diff", "mapping_diagram", "mapping_table", "matrix_figure",
           "module_grid", "pipeline_figure", "plan_rows", "pool_for_display", "pooled_mask", "run_curves",
           "sensitivity_heatmap", "share_grid", "short_module_name", "similarity_heatmap", "spectrum_figure",
           "table_to_mapping", "task_specific_layers"]
