"""Sensitivity: where the task knowledge sits in the teacher (heatmaps, layer scores, drill-down, compare)."""
from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from paraknow import viz
from paraknow.core.architecture import LAYER_ROLES
from paraknow.core.data import load_records
from paraknow.core.tasks import TASKS
from paraknow.transfer.mapping import map_layers
from paraknow.transfer.sensitivity import METRICS, SensitivityConfig
from ui import jobs as J
from ui import state as S
from ui import widgets as W
from ui.state import PERSIST

W.entry_guard()
st.title("Sensitivity")
st.caption("How much each teacher parameter matters for the task: a few dozen seed samples, one backward "
           "pass each, |θ · ∇L| accumulated per parameter. Bright cells hold the task's knowledge.")
if not W.require("models"):
    W.stop()
t_info = S.get(S.TEACHER_INFO)

# ---- inputs ---------------------------------------------------------------------------
with st.container(border=True):
    picked = W.data_picker()
    c1, c2, c3 = st.columns(3)
    c1.number_input("Seed samples", min_value=1, max_value=100_000, step=1, key=S.W_SAMPLES, **PERSIST,
                    help="The paper uses 32. The first N records of the data are used.")
    c2.selectbox("Metric", list(METRICS), key=S.W_METRIC, **PERSIST, format_func=lambda m: m,
                 help="\n".join(f"- **{k}**: {m.help}" for k, m in METRICS.items()))
    c3.number_input("Max tokens per sample", min_value=8, max_value=32_768, step=64, key=S.W_MAXLEN, **PERSIST,
                    help="Longer samples are truncated (the paper: 2048).")
    config = SensitivityConfig(metric=st.session_state[S.W_METRIC], samples=int(st.session_state[S.W_SAMPLES]),
                               max_length=int(st.session_state[S.W_MAXLEN]))
    st.caption(f"Metric **{config.metric}**: {METRICS[config.metric].help}. "
               f"Teacher {W.md_code(S.get(S.TEACHER)['ref'])} ({t_info.n_params / 1e6:.2f}M parameters).")
    request = J.try_sensitivity_request(picked, config)
    if st.button("Compute sensitivity", type="primary", icon=":material/play_arrow:", disabled=picked is None,
                 key="w_sens_compute",
                 help="Runs in the background: moving around, changing the view or reloading the page never "
                      "stops it; the same data and settings attach to the running computation."):
        with W.show_errors("computing the sensitivity"):
            request = J.sensitivity_request(picked, config)
            J.start_sensitivity(request)
    J.follow_sensitivity(request, S.SENS, f"Sensitivity on {picked.label}" if picked else "Sensitivity")

sens = S.get(S.SENS)
if not sens or sens.teacher != S.get(S.TEACHER):
    st.info("Choose the seed data and press **Compute sensitivity**.", icon=":material/touch_app:")
    W.stop()

scores, table = sens.scores, sens.table
how = "from the cache" if sens.cached else f"{sens.seconds:.1f} s"
st.markdown(f"**Map:** {W.md_code(sens.label)} · {sens.config.samples} samples · {sens.config.metric} · "
            f"max {sens.config.max_length} tokens · {how}")
if request is None or request.key != sens.id:
    st.caption("The settings above differ from this map's: press **Compute sensitivity** to update it.")
if sens.seed_warning():
    st.warning(sens.seed_warning()[:1].upper() + sens.seed_warning()[1:], icon=":material/warning:")

# ---- overview -------------------------------------------------------------------------
st.subheader("Layers × modules")
left, right = st.columns([3, 2], gap="large")
with left:
    o1, o2 = st.columns(2)
    o1.segmented_control("Cell value", ["sum", "mean"], key=S.W_VALUE, **PERSIST, required=True,
                         format_func=lambda v: "sum" if v == "sum" else "mean per parameter",
                         help="Sum: total sensitivity of the matrix (large matrices weigh more). "
                              "Mean: per parameter, comparable across shapes.")
    o2.toggle("Log scale", key=S.W_LOG, **PERSIST)


def _on_cell_click() -> None:
    event = st.session_state.get(S.W_GRID_CHART)
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return
    for point in points:
        data = point.get("customdata")
        if data:
            st.session_state[S.W_DRILL_LAYER] = int(data[0])
            st.session_state[S.W_DRILL_MODULE] = str(data[1])
            return


drill_layer = st.session_state.get(S.W_DRILL_LAYER)
drill_module = st.session_state.get(S.W_DRILL_MODULE)
with left:
    fig = viz.sensitivity_heatmap(table, st.session_state[S.W_VALUE] or "sum", st.session_state[S.W_LOG],
                                  selected=(drill_layer, drill_module))
    W.chart(fig, key=S.W_GRID_CHART, on_select=_on_cell_click, selection_mode="points",
            config={"displayModeBar": False})
    st.caption("Click a cell to open that matrix below.")
with right:
    W.chart(viz.layer_bars(sens.layer_scores), config={"displayModeBar": False}, key="sens_layers")
    W.chart(viz.group_share_figure(sens.shares), config={"displayModeBar": False}, key="sens_groups")
    n_student = S.get(S.STUDENT_INFO).n_layers
    if n_student <= t_info.n_layers:
        kept = map_layers("sensitivity", t_info.n_layers, n_student, scores=sens.layer_scores)
        st.caption(f"The student has {n_student} layers; the sensitivity strategy keeps teacher layers {kept}.")

# ---- drill-down -----------------------------------------------------------------------
st.subheader("Drill down into one matrix")
modules = list(LAYER_ROLES) + ["embed_tokens"] + ([] if t_info.tied_embeddings else ["lm_head"])
if st.session_state.get(S.W_DRILL_MODULE) not in modules or \
        st.session_state.get(S.W_DRILL_LAYER) not in range(t_info.n_layers):
    best = max(table, key=lambda r: r["sum"])
    st.session_state[S.W_DRILL_LAYER], st.session_state[S.W_DRILL_MODULE] = best["layer"], best["module"]
d1, d2, d3, d4 = st.columns([2, 2, 1, 1])
module = d1.selectbox("Module", modules, key=S.W_DRILL_MODULE, **PERSIST)
layer = d2.selectbox("Layer", list(range(t_info.n_layers)), key=S.W_DRILL_LAYER, **PERSIST,
                     disabled=module in ("embed_tokens", "lm_head"))
d3.toggle("Log scale", key=S.W_DRILL_LOG, **PERSIST)
d4.toggle("Max pooling", key=S.W_DRILL_MAX, **PERSIST,
          help="A display cell shows the largest entry of its block instead of the mean (keeps isolated hot "
               "entries visible, e.g. the embedding rows of the tokens the seeds use).")
param = t_info.param_name(layer, module)
with W.show_errors("drawing the matrix"):
    if param not in scores:
        st.error(f"the map has no entry for {param}; recompute the sensitivity for this teacher.")
    else:
        t0 = time.perf_counter()
        fig = viz.matrix_figure(scores[param], title=param, log=st.session_state[S.W_DRILL_LOG],
                                reduce="max" if st.session_state[S.W_DRILL_MAX] else "mean")
        built = time.perf_counter() - t0
        W.chart(fig, config={"displayModeBar": False}, key="sens_matrix")
        row = next((r for r in table if r["param"] == param), None)
        total = row["sum"] if row else float(scores[param].sum())
        st.caption(f"`{param}` {list(scores[param].shape)} [out, in]: sum {total:.4g}"
                   + (f", mean per parameter {row['mean']:.3g}" if row else "")
                   + f". Top: column sums; right: row sums. Pooled for display in {built * 1000:.0f} ms.")

# ---- compare --------------------------------------------------------------------------
st.subheader("Compare two tasks")
st.caption("Which layers are task-specific? A second map on the same teacher with the same settings, "
           "each normalised to its total.")
c1, c2 = st.columns([2, 1])
other = c1.selectbox("Second task (seed split)", list(TASKS), key=S.W_CMP_TASK, **PERSIST,
                     format_func=lambda n: f"{n} ({TASKS[n].family})")
ref_b = f"task:{other}:seed"
seeds_b = J.SeedData(load_records(ref_b), ref_b, ref_b)
request_b = J.try_sensitivity_request(seeds_b, sens.config)
if c2.button("Compute the second map", icon=":material/compare_arrows:", key="w_cmp_compute"):
    with W.show_errors("computing the second map"):
        request_b = J.sensitivity_request(seeds_b, sens.config)
        J.start_sensitivity(request_b)
J.follow_sensitivity(request_b, S.SENS_B, f"Sensitivity on {ref_b}")
sens_b = S.get(S.SENS_B)
if sens_b and sens_b.teacher == S.get(S.TEACHER):
    mode = st.segmented_control("Show", ["difference", "side by side"], key=S.W_CMP_MODE, **PERSIST, required=True)
    with W.show_errors("comparing the maps"):
        W.chart(viz.compare_figure(table, sens_b.table, sens.label, sens_b.label,
                                   mode="side" if mode == "side by side" else "diff",
                                   value=st.session_state[S.W_VALUE] or "sum"),
                config={"displayModeBar": False}, key="sens_compare")
        W.chart(viz.layer_share_diff(sens.layer_scores, sens_b.layer_scores, sens.label,
                                     sens_b.label), config={"displayModeBar": False}, key="sens_cmp_layers")
        specific = viz.task_specific_layers(sens.layer_scores, sens_b.layer_scores)
        st.markdown("Most task-specific layers: " + ", ".join(
            f"layer {i} ({d:+.1%} for {sens_b.label if d > 0 else sens.label})" for i, d in specific))
elif sens_b is None:
    st.info("Pick a second task and press **Compute the second map**.", icon=":material/compare_arrows:")

with st.expander("All layer × module values"):
    st.dataframe(pd.DataFrame(table).drop(columns=["param"]), hide_index=True, width="stretch")

W.report_actions("Sensitivity", {"cell value": st.session_state[S.W_VALUE], "log scale": st.session_state[S.W_LOG],
                                 "matrix shown": f"layer {st.session_state.get(S.W_DRILL_LAYER)} "
                                                 f"{st.session_state.get(S.W_DRILL_MODULE)}",
                                 "compared with": sens_b.label if sens_b else "none"})
st.page_link(W.PAGE_MAPPING, label="Next: choose the layer mapping and the submatrices",
             icon=":material/arrow_forward:")
