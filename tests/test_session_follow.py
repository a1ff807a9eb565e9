"""Pages follow the session: the task of the map and the export made upstream become the defaults of
Fine-tune, Playground, Study and the Lesson's sidebar (AppTest on the demo pair)."""
from __future__ import annotations

from apptest import assert_ok, open_page
from conftest import finish_jobs

from ui import state as S


def test_task_and_export_chosen_upstream_are_the_defaults_downstream():
    at = open_page(None, 600)
    at.button(key="w_home_quickstart").click().run()
    assert_ok(at)
    at.switch_page("pages/6_Fine-tune.py").run()
    assert_ok(at)
    assert at.selectbox(key=S.W_FT_TASK + "train").value == "arith"  # the quick start's map

    at.switch_page("pages/3_Sensitivity.py").run()
    at.selectbox(key=S.W_TASK).set_value("facts").run()
    at.number_input(key=S.W_SAMPLES).set_value(4).run()
    finish_jobs(at.button(key="w_sens_compute").click().run())
    assert_ok(at)
    assert at.session_state[S.SENS].label.startswith("task:facts")

    at.switch_page("pages/5_Export.py").run()
    at.text_input(key=S.W_NAME).set_value("follow-facts").run()
    finish_jobs(at.button(key="w_exp_run").click().run())
    assert_ok(at)
    assert at.session_state[S.EXPORT]["name"] == "follow-facts"

    at.switch_page("pages/6_Fine-tune.py").run()
    assert_ok(at)
    assert at.selectbox(key=S.W_FT_TASK + "train").value == "facts"
    assert at.selectbox(key=S.W_FT_TASK + "eval").value == "facts"
    assert at.radio(key=S.W_FT_INIT).value == "pkt"
    assert at.selectbox(key=S.W_FT_EXPORT).value == "follow-facts"
    at.selectbox(key=S.W_FT_TASK + "train").set_value("instruct").run()  # a page's own pick stays
    at.switch_page("pages/7_Playground.py").run()
    assert_ok(at)
    assert at.selectbox(key=S.W_PG_TASK).value == "facts"
    at.switch_page("pages/8_Study.py").run()
    assert_ok(at)
    assert at.selectbox(key=S.W_ST_TASK).value == "facts"
    at.switch_page("pages/9_Lesson.py").run()
    assert_ok(at)
    assert at.selectbox(key=S.W_LESSON_TASK).value == "facts"  # the lesson's sidebar follows the map too
    assert at.session_state[S.LESSON].config.task == "facts"
    at.switch_page("pages/6_Fine-tune.py").run()
    assert at.selectbox(key=S.W_FT_TASK + "train").value == "instruct"


def test_progress_bars_show_a_percentage():
    from ui.widgets import Progress

    class Bar:
        def __init__(self):
            self.shown = []

        def progress(self, fraction, text):
            self.shown.append((fraction, text))
            return self

    bar = Bar()
    progress = Progress("Sensitivity", container=bar, every=0)
    progress(8, 32, "sample 8/32: loss 0.001")
    progress(32, 32, "")
    assert bar.shown[-2:] == [(0.25, "Sensitivity: 25% · sample 8/32: loss 0.001"), (1.0, "Sensitivity: 100%")]
