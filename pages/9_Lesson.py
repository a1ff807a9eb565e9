"""Lesson: the whole PKT pipeline on the demo pair in nine guided steps (paraknow.lesson does the work)."""
from __future__ import annotations

import streamlit as st

from paraknow import lesson as L
from paraknow.core.tasks import TASKS
from paraknow.runs import rundir
from paraknow.runs.playground import LOSS_SCALE, token_loss_html
from paraknow.viz import run_curves
from ui import finetune as F
from ui import state as S
from ui import widgets as W
from ui.state import PERSIST

LIVE_EVERY_S = 1.5
PRESENTATION_CSS = """<style>
[data-testid="stMain"] p, [data-testid="stMain"] li, [data-testid="stMain"] td, [data-testid="stMain"] th,
[data-testid="stMain"] label, [data-testid="stMain"] button { font-size: 1.45rem !important; }
[data-testid="stMain"] h1 { font-size: 3.2rem !important; }
[data-testid="stMain"] h2, [data-testid="stMain"] h3 { font-size: 2.4rem !important; }
[data-testid="stMain"] .katex { font-size: 1.6rem !important; }
[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"] { display: none !important; }
</style>"""  # the sidebar (this session's settings, the page list) is hidden: the projector shows the lesson

W.entry_guard()
ss = st.session_state


def lesson() -> L.Lesson:
    """The session's lesson on its pair and the task its map was made on (its models come from the app's
    shared model cache)."""
    teacher, student = S.default_refs()
    task = ss[S.W_LESSON_TASK]
    held = S.get(S.LESSON)
    if held is None or (held.config.teacher, held.config.student, held.config.task) != (teacher, student, task):
        held = L.Lesson(L.LessonConfig(teacher=teacher, student=student, task=task),
                        loader=lambda ref: W.load_model_cached(ref)[:2])
        S.put(S.LESSON, held)
    return held


def go(key: str) -> None:
    ss[S.W_LESSON_STEP] = key


def figure(fig, present: bool):
    return L.presentation(fig) if present else fig


def show_result(les: L.Lesson, step: L.Step, result: L.StepResult, present: bool) -> None:
    if step.question is not None and step.key in les.predictions:
        st.info(L.judge(step.question, result, les.predictions[step.key]), icon=":material/quiz:")
    with st.container(key="lesson-note"):
        st.success(f"**What to notice.** {result.note}", icon=":material/visibility:")
    for i, (title, fig) in enumerate(result.figures):
        W.chart(figure(fig, present), key=f"lesson_{step.key}_{i}", title=title, config={"displayModeBar": False})
    if step.key == "compare":
        outputs = result.extra["outputs"]
        q1, q2 = st.columns(2)
        q1.markdown("**The question** (test item)")
        q1.text(result.extra["prompt"])
        q2.markdown("**The reference answer**")
        q2.text(result.extra["reference"])
        for column, out in zip(st.columns(len(outputs)), outputs):
            with column.container(border=True):
                st.markdown(f"**{W.md_escape(out.name)}**")
                st.text(out.text or "(empty)")
                st.html(token_loss_html(out.losses, LOSS_SCALE))
    with st.container(key="lesson-table"):
        st.table(result.table)


def finetune_panel(les: L.Lesson, live: bool) -> None:
    """The lesson's run: start it, follow it live, and show the result when it has finished."""
    with W.show_errors("following the fine-tuning run"), W.collecting_figures():
        run = les.run()
        active = run is not None and F.is_active(run)
        if live != active:
            st.rerun()  # it started or ended: redraw the page and switch the live updates on or off
        if run is None:
            failed = les.failed_run()
            if failed is not None:
                st.warning(f"The last lesson run ({failed.run_id}) ended {failed.state}: "
                           f"{failed.status.get('error') or 'no error recorded'}. Start it again.",
                           icon=":material/warning:")
            c = les.config
            st.caption(f"Trains `{c.student}` from the lesson's export on `task:{c.task}:train`: {c.epochs:g} epoch, "
                       f"batch {c.batch}, lr {c.lr:g}, seed {c.seed}. It runs as a background job: a reload or "
                       "another page does not stop it.")
            if st.button("Start fine-tuning in the background", type="primary", icon=":material/model_training:",
                         key="w_lesson_train"):
                les.start_training()
                st.rerun()
            return
        if active:
            frac, text = F.progress_of(run)
            st.progress(frac, text=f"Run {run.run_id}: {text}")
            rows = rundir.read_metrics(run.run_dir)
            curves = run_curves([{"label": "PKT (lesson)", "rows": rows, "color": "#e53935"}])
            W.chart(figure(curves, ss[S.W_LESSON_PRESENT]),
                    key="lesson_live_curves", title="Training curves (live)", config={"displayModeBar": False})
            return
        result = L.run_step(les, "finetune")
        show_result(les, L.step("finetune"), result, ss[S.W_LESSON_PRESENT])


# ---- header ----------------------------------------------------------------------------
st.title("Lesson: knowledge transfer in nine steps")
with st.sidebar.container(border=True):
    st.selectbox("Lesson task", list(TASKS), key=S.W_LESSON_TASK, **PERSIST,
                 help="Its seed samples, training data and test questions. A map made upstream on a built-in task "
                      "makes that task the lesson's; the pair is the session's teacher and student.")
les = lesson()
c1, c2 = st.columns([5, 2], vertical_alignment="center")
c1.caption(f"A guided walk through the whole pipeline on `{les.config.teacher}` → `{les.config.student}`, task "
           f"`{les.config.task}`. Every "
           "step runs the real computation and writes its “what to notice” from the numbers it shows; slow results "
           "are cached, so a second class starts where the first ended.")
present = c2.toggle("Presentation mode", key=S.W_LESSON_PRESENT, **PERSIST,
                    help="Larger fonts and charts and no sidebar, for a projector.")
if present:
    st.html(PRESENTATION_CSS)
if ss.get(S.W_LESSON_STEP) not in L.STEP_KEYS:
    ss[S.W_LESSON_STEP] = L.STEP_KEYS[0]
titles = {s.key: f"{i + 1}. {s.title}" for i, s in enumerate(L.STEPS)}
# (fixed labels: a label that changes makes Streamlit see a new widget, which forgets the chosen step)
key = st.radio("Step", L.STEP_KEYS, key=S.W_LESSON_STEP, **PERSIST, horizontal=True, format_func=titles.get)
index = L.STEP_KEYS.index(key)
step = L.STEPS[index]
done = [titles[k].split(".")[0] for k in L.STEP_KEYS if k in les.results]
st.progress((index + 1) / len(L.STEPS), text=f"Step {index + 1} of {len(L.STEPS)}"
            + (f" · done: {', '.join(done)}" if done else ""))
st.header(f"Step {index + 1}: {step.title}")
with st.container(border=True):
    st.markdown(f"**The formula.** {step.formula}")

# ---- the step --------------------------------------------------------------------------
if step.background:
    live = False
    with W.show_errors("reading the lesson's run"):
        run = les.run()
        live = run is not None and F.is_active(run)
    st.fragment(lambda lv: finetune_panel(les, lv), run_every=LIVE_EVERY_S if live else None)(live)
else:
    if step.question is not None and step.key not in les.results:
        with st.container(border=True):
            st.markdown(f"**Predict first.** {step.question.prompt}")
            st.radio("Your prediction", list(step.question.options), key=S.W_LESSON_PREDICT + step.key, index=None,
                     format_func=step.question.options.get)
    result = les.results.get(step.key)
    if result is None:
        trained = les.run() if step.key == "compare" else None
        needs_run = step.key == "compare" and (trained is None or trained.state != "finished")
        if needs_run:
            st.info("This step compares the student before and after the fine-tuning run: run step "
                    f"{L.STEP_KEYS.index('finetune') + 1} first.", icon=":material/arrow_back:")
            st.button("Go to the fine-tune step", on_click=go, args=("finetune",), key="w_lesson_to_finetune")
        label = "Reveal" if step.question is not None else "Run this step"
        if st.button(label, type="primary", icon=":material/play_arrow:", key=f"w_lesson_run_{step.key}",
                     disabled=needs_run):
            with W.show_errors(f"running the step “{step.title}”"), st.spinner(f"{step.title}…"):
                predicted = ss.get(S.W_LESSON_PREDICT + step.key)
                if predicted:
                    les.predictions[step.key] = predicted
                L.run_step(les, step.key)
                st.rerun()  # redraw without the button: the step is done
    if result is not None:
        show_result(les, step, result, present)
        W.report_actions(f"Lesson {step.title}", {"lesson step": titles[step.key], "what to notice": result.note})

# ---- moving on -------------------------------------------------------------------------
b1, _, b2 = st.columns([1, 4, 1])
b1.button("Back", icon=":material/arrow_back:", key="w_lesson_back", disabled=index == 0,
          on_click=go, args=(L.STEP_KEYS[max(0, index - 1)],), width="stretch")
b2.button("Next", icon=":material/arrow_forward:", key="w_lesson_next", disabled=index == len(L.STEPS) - 1,
          on_click=go, args=(L.STEP_KEYS[min(len(L.STEPS) - 1, index + 1)],), width="stretch")
