"""paraknow — Streamlit entry point: navigation, shared session state, and the home page.

    streamlit run app.py

Every page runs through this file (st.navigation), so the session state is initialised once
here and the sidebar status is drawn on every page.
"""
from __future__ import annotations

import streamlit as st

from ui import session
from ui import state as S  # ui/ sits beside this file, which `streamlit run` puts on the import path
from ui import widgets as W

st.set_page_config(page_title="paraknow — parametric knowledge transfer", page_icon=":material/hub:",
                   layout="wide")
S.init()
with W.show_errors("opening the session from the link"):
    session.restore_from_url()


def home() -> None:
    from paraknow.transfer.sensitivity import SensitivityConfig
    from paraknow.viz import pipeline_figure

    st.title("paraknow: parametric knowledge transfer")
    st.markdown(
        "A larger **teacher** model already knows how to do a task. *Parametric knowledge transfer* "
        "(PKT, “Seeking Neural Nuggets”, Zhong et al., ICLR 2024) moves part of that knowledge into a "
        "smaller **student** through its weights rather than through its outputs: measure how much each "
        "teacher parameter matters for the task (**sensitivity** = |θ · ∇L| summed over a few dozen seed "
        "samples), keep the most sensitive teacher layers, cut from each of their weight matrices the "
        "student-sized **submatrix** holding the most sensitivity, and factorise it with an SVD into a "
        "**LoRA initialisation** for the student, which is then fine-tuned as usual.")
    pipeline_slot = st.empty()  # drawn after the quick start below, so it shows what that button just did

    left, right = st.columns([3, 2], gap="large")
    with left:
        st.subheader("Quick start")
        t_ref, s_ref = S.default_refs()
        sens_defaults = SensitivityConfig()
        st.markdown(f"One click: load `{t_ref}` + `{s_ref}`, compute the teacher's sensitivity on "
                    f"`{W.QUICK_TASK}` ({sens_defaults.samples} samples, {sens_defaults.metric}) and make the "
                    f"default plan: {W.quick_start_plan_text()}.")
        if st.button("Quick start on the demo pair", type="primary", icon=":material/rocket_launch:",
                     key="w_home_quickstart"):
            # the diagram stays while the quick start runs (it is redrawn with the new state below)
            pipeline_slot.plotly_chart(pipeline_figure(S.progress_summary()), config={"displayModeBar": False},
                                       key="home_pipeline_before")
            with W.show_errors("running the quick start"):
                W.quick_start()
        if S.get(S.QUICKSTART):
            st.success(S.get(S.QUICKSTART), icon=":material/check_circle:")
        st.markdown("**Next steps**")
        st.page_link(W.PAGE_MODELS, label="Models: choose the teacher and the student", icon=":material/memory:")
        st.page_link(W.PAGE_SENSITIVITY, label="Sensitivity: where the task knowledge sits",
                     icon=":material/local_fire_department:")
        st.page_link(W.PAGE_MAPPING, label="Mapping: layers and submatrices", icon=":material/account_tree:")
        st.page_link(W.PAGE_EXPORT, label="Export: the LoRA initialisation", icon=":material/package_2:")
        st.page_link(W.PAGE_PLAYGROUND, label="Playground: the models' answers side by side", icon=":material/compare:")
        st.page_link(W.PAGE_LESSON, label="Lesson: the whole pipeline in nine guided steps, for a class",
                     icon=":material/school:")
    pipeline_slot.plotly_chart(pipeline_figure(S.progress_summary()), config={"displayModeBar": False},
                               key="home_pipeline")
    with right:
        st.subheader("This session")
        t, s, sens, held = S.get(S.TEACHER), S.get(S.STUDENT), S.get(S.SENS), S.get(S.PLAN)
        t_info, s_info = S.get(S.TEACHER_INFO), S.get(S.STUDENT_INFO)
        rows = [
            ("Teacher", f"{W.md_code(t['ref'])} · {t_info.n_layers} layers · {t_info.n_params / 1e6:.2f}M params" if t else "not loaded"),
            ("Student", f"{W.md_code(s['ref'])} · {s_info.n_layers} layers · {s_info.n_params / 1e6:.2f}M params" if s else "not loaded"),
            ("Sensitivity", f"{W.md_escape(sens.label)} · {sens.config.samples} samples · {sens.config.metric}"
             if sens else "not computed"),
            ("Mapping", f"layers {held.plan.layer_map} · {len(held.plan.modules)} modules" if held else "not planned"),
            ("Exports", ", ".join(W.md_code(name) for name in S.get(S.EXPORTS_MADE)) or "none yet"),
        ]
        st.table({"step": [r[0] for r in rows], "state": [r[1] for r in rows]})
        st.caption("Everything is kept while you move between pages, and the address bar holds the session: "
                   "a reload or a link opens it again. Results are cached by content: the same models, data "
                   "and settings come back instantly, and long computations go on in the background.")
        W.cache_panel()


# URL names equal the ones Streamlit's legacy pages/ mode gives the same files (/Models, ...), so a direct
# link right after the server starts, when that mode is still on, finds its page (see widgets.entry_guard).
PAGES = [
    st.Page(home, title="Home", icon=":material/home:", default=True, url_path="home"),
    st.Page(W.PAGE_MODELS, title="Models", url_path="Models", icon=":material/memory:"),
    st.Page(W.PAGE_SENSITIVITY, title="Sensitivity", url_path="Sensitivity", icon=":material/local_fire_department:"),
    st.Page(W.PAGE_MAPPING, title="Mapping", url_path="Mapping", icon=":material/account_tree:"),
    st.Page(W.PAGE_EXPORT, title="Export", url_path="Export", icon=":material/package_2:"),
]
PAGES.append(st.Page(W.PAGE_FINETUNE, title="Fine-tune", url_path="Fine-tune", icon=":material/model_training:"))
PAGES.append(st.Page(W.PAGE_PLAYGROUND, title="Playground", url_path="Playground", icon=":material/compare:"))
PAGES.append(st.Page(W.PAGE_STUDY, title="Study", url_path="Study", icon=":material/science:"))
PAGES.append(st.Page(W.PAGE_LESSON, title="Lesson", url_path="Lesson", icon=":material/school:"))

W.HOME_PAGE = PAGES[0]  # page_link to the home page needs its Page object (it is a function)
page = st.navigation(PAGES)
status_slot = st.sidebar.container()  # filled after the page ran, so it shows this run's results
try:
    with W.running_in_app(), W.collecting_figures():
        page.run()
except W.StopPage:  # a page ended early (missing prerequisite, error): the sidebar still shows the state
    pass
W.sidebar_status(status_slot)
session.recipe_panel()
session.write_url()
