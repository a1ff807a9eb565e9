"""Page 9 (Lesson) through streamlit.testing.v1.AppTest on the demo pair: steps run on a click, the
page prints the note the library computed, "predict first" reveals against the result, the compare
step waits for a finished run, and presentation mode enlarges fonts and charts."""
from __future__ import annotations

import json

import pytest
from apptest import assert_ok, open_page
from streamlit.testing.v1 import AppTest

from paraknow import lesson as L
from ui import state as S

PAGE = "pages/9_Lesson.py"


def _open() -> AppTest:
    return open_page(PAGE, 600)


def _chart_heights(at: AppTest) -> list[int]:
    return [json.loads(c.proto.spec)["layout"]["height"] for c in at.get("plotly_chart")]


@pytest.mark.slow
def test_steps_run_on_click_and_show_the_computed_note():
    at = _open()
    assert at.session_state[S.W_LESSON_STEP] == "load"
    assert not at.success  # nothing has run yet
    at.button(key="w_lesson_run_load").click().run()
    assert_ok(at)
    lesson = at.session_state[S.LESSON]
    assert [s.value for s in at.success] == [f"**What to notice.** {lesson.results['load'].note}"]
    assert not [b for b in at.button if b.key == "w_lesson_run_load"]  # done: no button any more
    assert at.table[0].value.shape[0] == 2  # teacher and student

    at.button(key="w_lesson_next").click().run()
    assert at.session_state[S.W_LESSON_STEP] == "sensitivity"
    at.button(key="w_lesson_run_sensitivity").click().run()
    assert_ok(at)
    assert at.success[0].value.endswith(lesson.results["sensitivity"].note)
    normal = _chart_heights(at)

    at.toggle(key=S.W_LESSON_PRESENT).set_value(True).run()
    assert_ok(at)
    assert at.session_state[S.W_LESSON_STEP] == "sensitivity"  # the toggle keeps the step shown
    assert any("font-size" in h.proto.body for h in at.get("html"))
    assert _chart_heights(at) == [int(h * L.PRESENTATION_SCALE) for h in normal]


@pytest.mark.slow
def test_predict_first_then_reveal():
    at = _open()
    at.radio(key=S.W_LESSON_STEP).set_value("structure").run()
    at.radio(key=S.W_LESSON_PREDICT + "structure").set_value("submatrix").run()
    at.button(key="w_lesson_run_structure").click().run()
    assert_ok(at)
    result = at.session_state[S.LESSON].results["structure"]
    expected = L.judge(L.STRUCTURE_QUESTION, result, "submatrix")
    assert [i.value for i in at.info] == [expected]
    assert ("right" in expected) == (result.facts["best"] == "submatrix")
    assert at.success[0].value.endswith(result.note)


@pytest.mark.slow
def test_compare_waits_for_the_fine_tuning_run():
    at = _open()
    at.radio(key=S.W_LESSON_STEP).set_value("compare").run()
    assert_ok(at)
    assert at.button(key="w_lesson_run_compare").disabled
    assert "run step 7 first" in at.info[0].value
    at.button(key="w_lesson_to_finetune").click().run()
    assert at.session_state[S.W_LESSON_STEP] == "finetune"
    assert at.button(key="w_lesson_train")  # the run is started only on this click
