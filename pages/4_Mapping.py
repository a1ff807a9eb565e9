"""Mapping: which teacher layer feeds each student layer, which modules, which submatrix of each."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from paraknow import viz
from paraknow.core.architecture import ATTN_ROLES, EMBED_ROLES, FFN_ROLES
from paraknow.core.compatibility import compatibility
from paraknow.core.errors import ParaknowError
from paraknow.extract import STRUCTURE_HELP, STRUCTURES, oriented
from paraknow.runs import background
from paraknow.transfer.diagnostics import module_cosines
from paraknow.transfer.mapping import LAYER_STRATEGIES, STRATEGY_HELP, map_layers
from paraknow.transfer.structure import COHERENT, head_axes
from ui import compare as C
from ui import jobs as J
from ui import state as S
from ui import widgets as W
from ui.state import PERSIST

W.entry_guard()
st.title("Mapping")
st.caption("Decide what moves: a teacher layer for every student layer, the modules, and for each teacher "
           "matrix the student-sized part to extract. The selection is drawn on the teacher's sensitivity.")
if not W.require("models", "sensitivity"):
    W.stop()
t_info, s_info, sens = S.get(S.TEACHER_INFO), S.get(S.STUDENT_INFO), S.get(S.SENS)
n_t, n_s = t_info.n_layers, s_info.n_layers
report = compatibility(t_info, s_info)


def _auto_map(strategy: str) -> list:
    try:
        return map_layers(strategy, n_t, n_s, scores=sens.layer_scores, seed=int(st.session_state[S.W_MAP_SEED]))
    except ParaknowError:
        return [min(j, n_t - 1) for j in range(n_s)]


def _edit_as_manual(current: list) -> None:
    st.session_state[S.W_STRATEGY] = "manual"
    S.put(S.MANUAL_MAP, list(current))
    S.put(S.MANUAL_VERSION, S.get(S.MANUAL_VERSION) + 1)


def _set_override(module: str, default: tuple[int, int]) -> None:
    on = st.session_state.get(f"{S.W_OVR_ON}::{module}")
    overrides = dict(S.get(S.OVERRIDES) or {})
    if on:
        rk, ck = f"{S.W_OVR_ROW}::{module}", f"{S.W_OVR_COL}::{module}"
        st.session_state.setdefault(rk, default[0])
        st.session_state.setdefault(ck, default[1])
        overrides[module] = (int(st.session_state[rk]), int(st.session_state[ck]))
    else:
        overrides.pop(module, None)
    S.put(S.OVERRIDES, overrides)


# ---- controls -------------------------------------------------------------------------
C.adopt_clicked()  # a row clicked in the comparison table below: before the widgets that show it
with st.container(border=True):
    c1, c2 = st.columns(2, gap="large")
    strategy = c1.selectbox("Layer strategy", list(LAYER_STRATEGIES), key=S.W_STRATEGY, **PERSIST,
                            help="\n".join(f"- **{k}**: {v}" for k, v in STRATEGY_HELP.items()))
    c1.caption(STRATEGY_HELP[strategy])
    if strategy == "random":
        c1.number_input("Seed", min_value=0, step=1, key=S.W_MAP_SEED, **PERSIST)
    structure = c2.selectbox("Structure", list(STRUCTURES), key=S.W_STRUCTURE, **PERSIST,
                             help="\n".join(f"- **{k}**: {v}" for k, v in STRUCTURE_HELP.items()))
    c2.caption(STRUCTURE_HELP[structure])
    coherent = c2.segmented_control("Coherent", list(COHERENT), key=S.W_COHERENT, **PERSIST, required=True,
                                    help="One set of residual-stream dimensions (and of FFN neurons) shared by "
                                         "the matrices of a layer or of the whole model, so the moved pieces "
                                         "describe the same dimensions.")
    c2.caption(f"**coherent {coherent}**: {COHERENT[coherent]}")
    st.markdown("**Modules to transfer**")
    for label, roles in (("attention", ATTN_ROLES), ("FFN", FFN_ROLES), ("embeddings", EMBED_ROLES)):
        cols = st.columns([1, 1.3, 1.3, 1.3, 1.3, 0.6])
        cols[0].caption(label)
        for box, role in zip(cols[1:], roles):
            disabled = role in EMBED_ROLES and not report.vocab_match
            box.checkbox(role, key=S.W_MODULE_PREFIX + role, **PERSIST, disabled=disabled,
                         help=f"embeddings cannot transfer: {report.tokenizer_mismatch}" if disabled else None)
    if not report.vocab_match:
        st.caption(f"Embeddings are skipped: {report.tokenizer_mismatch}.")

if W.selected_modules() == ():
    st.warning("No module is ticked: tick at least one module above (attention, FFN or embeddings) to plan "
               "a transfer.", icon=":material/warning:")
    W.stop()

if strategy == "manual" and (not S.get(S.MANUAL_MAP) or len(S.get(S.MANUAL_MAP)) != n_s):
    S.put(S.MANUAL_MAP, _auto_map("sensitivity"))
    S.put(S.MANUAL_VERSION, S.get(S.MANUAL_VERSION) + 1)

# ---- layer map: table first (its edits feed the plan), then the diagram --------------
st.subheader("Layer mapping")
left, right = st.columns([3, 2], gap="large")
with right:
    if strategy == "manual":
        editor_key = f"{S.W_MAP_EDITOR}{S.get(S.MANUAL_VERSION)}"
        if editor_key not in st.session_state:
            S.put(S.MANUAL_BASE, list(S.get(S.MANUAL_MAP)))
        base = pd.DataFrame(viz.mapping_table(S.get(S.MANUAL_BASE)))
        edited = st.data_editor(
            base, key=editor_key, hide_index=True, width="stretch", disabled=[viz.TABLE_STUDENT],
            column_config={viz.TABLE_TEACHER: st.column_config.SelectboxColumn(
                options=[viz.UNMAPPED] + [str(i) for i in range(n_t)], required=True,
                help="teacher layer feeding this student layer; - leaves it unmapped")})
        with W.show_errors("reading the mapping table"):
            S.put(S.MANUAL_MAP, viz.table_to_mapping(edited.to_dict("records"), n_s, n_t))
        st.caption("Edit the teacher column: a teacher layer may feed several student layers; "
                   "`-` leaves a student layer with the vanilla LoRA init.")

if strategy == "cka" and W.current_similarity() is None:
    with right:
        st.info("The cka map needs the layer similarity of the two models on the seed samples.",
                icon=":material/info:")
        if st.button("Compute layer similarity", icon=":material/grid_on:", key="w_map_cka_for_map",
                     disabled=background.read("similarity", J.similarity_key()).live):
            with W.show_errors("computing the layer similarity"):
                J.start_similarity()
                st.rerun()
        J.follow_similarity()  # its progress while it runs; the page reruns when it is done
    W.stop()

try:
    with st.spinner("Planning: layer map and the selection in every teacher matrix…"):
        plan = W.current_plan()
except ParaknowError as exc:
    st.error(W.page_message(f"{exc} (The rank is set on the Export page.)" if exc.setting == "rank" else str(exc)),
             icon=":material/error:")  # the message may quote a value from the link: no links
    W.stop()

with right:
    if strategy != "manual":
        st.dataframe(pd.DataFrame(viz.mapping_table(plan.layer_map, sens.layer_scores)), hide_index=True,
                     width="stretch", column_config={"teacher layer share": st.column_config.ProgressColumn(
                         format="percent", min_value=0, max_value=max(1e-12, max(
                             s / (sum(sens.layer_scores) or 1) for s in sens.layer_scores)))})
        st.button("Edit this mapping by hand", on_click=_edit_as_manual, args=(plan.layer_map,),
                  icon=":material/edit:", key="w_map_to_manual")
with left:
    W.chart(viz.mapping_diagram(plan.layer_map, n_t, sens.layer_scores),
            config={"displayModeBar": False}, key="map_diagram")
for note in plan.notes:
    st.info(note, icon=":material/info:")

# ---- per-module selection preview -----------------------------------------------------
st.subheader("Selection preview")
if not plan.modules:
    st.warning("Nothing transfers with these settings: map at least one student layer and tick a module.",
               icon=":material/warning:")
    W.stop()
by_name = {m.student_module: m for m in plan.modules}
names = list(by_name)
if st.session_state.get(S.W_PREVIEW) not in names:
    st.session_state[S.W_PREVIEW] = names[0]


def _label(name: str) -> str:
    # the student module only: a label that depends on the plan would go stale in the open widget
    return f"student {viz.short_module_name(name)}"


p1, p2 = st.columns([3, 2], gap="large")
with p2:
    choice = st.selectbox("Student module", names, key=S.W_PREVIEW, **PERSIST, format_func=_label)
    mod = by_name[choice]
    block = mod.selection.block()
    m1, m2, m3 = st.columns(3)
    m1.metric("Captured", f"{mod.captured:.1%}", help="share of the teacher matrix's sensitivity inside "
              "the selection")
    m2.metric("Area", f"{mod.area:.1%}", help="share of the teacher matrix's entries the student's shape takes")
    m3.metric("Lift", f"{mod.lift:.2f}x", help="captured / area: 1 = no better than any part of that size")
    sets = plan.index_sets.get(mod.student_layer)
    if sets is not None:
        listed = []
        if sets.heads is not None and mod.role in ATTN_ROLES:
            dims = sets.heads.head_dims
            listed += [f"teacher KV heads **{sets.heads.kv_heads}** -> student KV heads 0-{len(sets.heads.kv_heads) - 1}",
                       f"query heads **{sets.heads.q_heads}** (in the student's order, grouped by KV head)",
                       f"all {t_info.head_dim} dims of every head" if len(dims) == t_info.head_dim else
                       f"dims kept in every head: {viz.index_ranges(dims)} of {t_info.head_dim} "
                       f"(rotary pairs i, i + {t_info.head_dim // 2} kept together)"]
        if sets.neurons is not None and mod.role in FFN_ROLES:
            listed.append(f"FFN neurons ({len(sets.neurons)} of {t_info.intermediate_size}, shared by "
                          f"gate/up/down): {viz.index_ranges(sets.neurons)}")
        if sets.hidden is not None:
            listed.append(f"residual dims ({len(sets.hidden)} of {t_info.hidden_size}, shared "
                          f"{'by the whole model' if coherent == 'model' else 'in this layer'}): "
                          f"{viz.index_ranges(sets.hidden)}")
        if listed:
            st.markdown("\n".join(f"- {line}" for line in listed))
    with W.show_errors("comparing the extracted init with the student's weight"):
        config = W.current_transfer_config()
        teacher_model, student_model = W.get_model("teacher")[0], W.get_model("student")[0]
        cos = module_cosines(dict(teacher_model.named_parameters()), dict(student_model.named_parameters()),
                             mod, config)
        st.caption(f"Init s·B·A (rank {config.rank}) vs the student's W: cosine {cos.to_weight:+.3f}; "
                   f"vs the residual base W − s·B·A: {cos.to_residual:+.3f}.")
    st.caption(f"From teacher `{mod.teacher_param}` {list(mod.teacher_shape)} → student {list(mod.shape)}"
               + (" (embedding, reduced over the hidden size as [d, V])" if mod.transposed else "")
               + (f"; block at row {block[0]}, column {block[1]}." if block else "; scattered rows/columns/entries."))
    max_r, max_c = mod.teacher_shape[0] - mod.shape[0], mod.teacher_shape[1] - mod.shape[1]
    current = (S.get(S.OVERRIDES) or {}).get(choice)
    default = current or block or (0, 0)
    on_key = f"{S.W_OVR_ON}::{choice}"
    if on_key not in st.session_state:
        st.session_state[on_key] = current is not None
    if max_r == 0 and max_c == 0:
        st.caption("The teacher matrix has the student's shape: there is only one block position.")
    else:
        st.checkbox("Place this block by hand", key=on_key, **PERSIST, on_change=_set_override,
                    args=(choice, default),
                    help="Overrides the structure for this module; stored in the export's manifest.")
        if st.session_state[on_key]:
            rk, ck = f"{S.W_OVR_ROW}::{choice}", f"{S.W_OVR_COL}::{choice}"
            st.session_state.setdefault(rk, default[0])
            st.session_state.setdefault(ck, default[1])
            if max_r > 0:
                st.slider("Block row (top)", 0, max_r, key=rk, **PERSIST, on_change=_set_override,
                          args=(choice, default))
            if max_c > 0:
                st.slider("Block column (left)", 0, max_c, key=ck, **PERSIST, on_change=_set_override,
                          args=(choice, default))
            if mod.auto_captured is not None:
                st.caption(f"The automatic **{structure}** selection captures {mod.auto_captured:.1%}.")
with p1:
    scores_m = oriented(sens.scores[mod.teacher_param], mod.transposed)  # [o_T, i_T]
    W.chart(viz.matrix_figure(scores_m, title=f"{mod.teacher_param}{' (transposed)' if mod.transposed else ''}",
                              selection=mod.selection, height=520,
                              heads=head_axes(mod.role, t_info.head_dim)),
            config={"displayModeBar": False}, key="map_preview")
    if mod.role in ATTN_ROLES:
        st.caption(f"Dotted lines: attention-head boundaries ({t_info.head_dim} rows/columns per head).")

st.subheader("Captured share per module")
st.caption("Area = the share of the teacher matrix's entries the student takes; lift = captured / area "
           "(1 = no better than any part of the same size).")
rows = pd.DataFrame(viz.plan_rows(plan))
overrides = S.get(S.OVERRIDES) or {}
rows["override"] = [("manual " + str(tuple(overrides[n]))) if n in overrides else "" for n in rows["student module"]]
st.dataframe(rows, hide_index=True, width="stretch",
             column_order=["student module", "teacher layer", "captured", "area", "lift", "block at", "override",
                           "teacher shape", "student shape"],
             column_config={"captured": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1),
                            "area": st.column_config.NumberColumn(format="percent"),
                            "lift": st.column_config.NumberColumn(format="%.2fx")})
W.chart(viz.captured_bars(plan), config={"displayModeBar": False}, key="map_captured")

C.section(W.current_transfer_config())

# ---- layer similarity -----------------------------------------------------------------
st.subheader("Teacher × student layer similarity")
st.caption("Linear CKA between each teacher layer's and each student layer's hidden states on the seed samples "
           "(1 = the same representation up to rotation and scale). Circles mark the current mapping; "
           "use it to pick teacher layers for a manual map.")
if st.button("Compute layer similarity", icon=":material/grid_on:", key="w_map_cka",
             help="Runs in the background, like the sensitivity map."):
    with W.show_errors("computing the layer similarity"):
        J.start_similarity()
if J.follow_similarity() is not None:  # its progress while it runs
    cka = S.get(S.CKA)
    W.chart(viz.similarity_heatmap(cka["matrix"], plan.layer_map), config={"displayModeBar": False},
            key="map_cka")
    st.caption(f"Computed on {cka['info']['n']} {cka['info']['inputs']} from {cka['info']['samples']} seed samples.")

W.report_actions("Mapping", {"layer strategy": strategy, "structure": structure, "modules": W.planned_roles(),
                             "manual block overrides": len(S.get(S.OVERRIDES) or {})})
st.page_link(W.PAGE_EXPORT, label="Next: export the LoRA initialisation", icon=":material/arrow_forward:")
