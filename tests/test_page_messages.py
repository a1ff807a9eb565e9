"""Browser-visible slips of the pages, each fixed: no modules ticked, the export name following the
settings, the sidebar's plan mark, flags and emoji shortcodes in page messages, a running job's
progress and Cancel on the Sensitivity page."""
from __future__ import annotations

import pytest
from apptest import APP, assert_ok
from conftest import finish_jobs
from streamlit.testing.v1 import AppTest

from paraknow.core.architecture import EMBED_ROLES, LAYER_ROLES
from paraknow.runs import background
from ui import state as S
from ui.widgets import no_shortcodes, page_message


def _quick_started() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=600)
    at.run()
    at.button(key="w_home_quickstart").click().run()
    assert_ok(at)
    return at


def _sidebar(at: AppTest) -> str:
    return " ".join(str(m.value) for m in at.sidebar.markdown)


@pytest.mark.slow
def test_no_module_ticked_is_said_in_words_and_the_plan_loses_its_mark():
    at = _quick_started()
    at.switch_page("pages/4_Mapping.py").run()
    assert "mapping: [" in _sidebar(at)  # planned by the quick start
    for role in LAYER_ROLES + EMBED_ROLES:
        at.checkbox(key=S.W_MODULE_PREFIX + role).uncheck()
    at.run()
    assert_ok(at)
    warning = " ".join(str(w.value) for w in at.warning)
    assert "tick at least one module" in warning and "attn, ffn, embed" not in warning
    assert "mapping: not planned" in _sidebar(at)
    at.switch_page("pages/5_Export.py").run()
    assert_ok(at)
    assert any("No module is chosen" in str(w.value) for w in at.warning)
    assert not any("larger than the smallest dimension" in str(e.value) for e in at.error)


@pytest.mark.slow
def test_the_export_name_follows_the_settings_until_edited_and_a_second_export_does_not_collide():
    at = _quick_started()
    at.switch_page("pages/5_Export.py").run()
    first = at.session_state[S.W_NAME]
    finish_jobs(at.button(key="w_exp_run").click().run())
    assert_ok(at)
    assert at.session_state[S.EXPORT]["name"] == first
    at.number_input(key=S.W_RANK).set_value(8).run()
    second = at.session_state[S.W_NAME]
    assert second != first and second.rsplit("-", 1)[0] == first.rsplit("-", 1)[0]  # same stem, other settings
    finish_jobs(at.button(key="w_exp_run").click().run())
    assert_ok(at)
    assert at.session_state[S.EXPORTS_MADE] == [first, second]
    at.text_input(key=S.W_NAME).set_value("mine").run()
    at.number_input(key=S.W_RANK).set_value(4).run()
    assert at.session_state[S.W_NAME] == "mine"  # edited by hand: kept


@pytest.mark.slow
def test_a_running_map_shows_progress_and_cancel_and_survives_reruns():
    at = _quick_started()
    at.switch_page("pages/3_Sensitivity.py").run()
    at.selectbox(key=S.W_SPLIT).set_value("train").run()
    at.number_input(key=S.W_SAMPLES).set_value(300).run()
    at.button(key="w_sens_compute").click().run()
    assert_ok(at)
    (job,) = background.live_jobs()
    assert at.button(key=f"w_cancel_sensitivity_{job.key[:12]}")
    at.toggle(key=S.W_LOG).set_value(True).run()  # a widget change reruns the page; the job goes on
    at.selectbox(key=S.W_DRILL_MODULE).set_value("down_proj").run()
    assert background.read("sensitivity", job.key).live
    assert any("task:\u200barith:\u200btrain" in str(p.proto.text) for p in at.get("progress"))
    at.button(key=f"w_cancel_sensitivity_{job.key[:12]}").click().run()
    assert background.wait("sensitivity", job.key).state == "stopped"
    at.run()
    assert_ok(at)
    assert any("was stopped" in str(i.value) for i in at.info)
    assert not at.get("progress")  # no stale bar left beside the note
    assert at.session_state[S.SENS].config.samples == 32  # the quick start's map is still shown


def test_page_messages_name_settings_not_flags_and_make_no_emoji():
    text = "batch 5 is not a multiple of --micro-batch 2; overwrite it (--overwrite); see task:arith:train: 3"
    shown = page_message(text)
    assert "--" not in shown and "micro-batch 2" in shown and "(overwrite)" in shown
    assert ":train:" not in shown and shown.replace("\u200b", "") == text.replace("--", "")
    assert no_shortcodes("a: b, task:facts:seed") == "a: b, task:\u200bfacts:seed"
    # a command in backticks is one to type: its flags stay
    assert page_message("start it (`ray start --head`) or correct --address") == \
        "start it (`ray start --head`) or correct address"
