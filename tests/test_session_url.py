"""The session lives in the URL (ui/session.py): a new session opened with the app's query
parameters has the same models, settings, map, plan and export, the maps coming from the content
cache; the same state as a recipe makes the same export through `extract --recipe`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from apptest import APP, assert_ok
from conftest import finish_jobs
from safetensors.torch import load_file
from streamlit.testing.v1 import AppTest

from paraknow import cli
from paraknow.transfer.recipe import from_query, to_json
from ui import state as S
from ui.widgets import md_escape

TIMEOUT = 600


def _opened(query: dict) -> AppTest:
    """A new session (no state) opened on a link with `query`."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    return at


def _session_with_an_export() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.button(key="w_home_quickstart").click().run()
    at.switch_page("pages/3_Sensitivity.py").run()
    at.number_input(key=S.W_SAMPLES).set_value(6).run()
    finish_jobs(at.button(key="w_sens_compute").click().run())
    at.switch_page("pages/4_Mapping.py").run()
    at.selectbox(key=S.W_STRATEGY).set_value("uniform").run()
    at.selectbox(key=S.W_STRUCTURE).set_value("rowcol").run()
    at.checkbox(key=S.W_MODULE_PREFIX + "embed_tokens").uncheck().run()
    at.checkbox(key=S.W_MODULE_PREFIX + "lm_head").uncheck().run()
    at.switch_page("pages/5_Export.py").run()
    at.number_input(key=S.W_RANK).set_value(8).run()
    at.text_input(key=S.W_NAME).set_value("linked-export").run()
    finish_jobs(at.button(key="w_exp_run").click().run())
    assert_ok(at)
    return at


@pytest.mark.slow
def test_a_link_restores_the_state_and_the_results_and_the_recipe_reproduces_the_export(tmp_path, capsys):
    at = _session_with_an_export()
    query = dict(at.query_params)
    assert query["samples"] == "6" and query["layers"] == "uniform" and query["structure"] == "rowcol"
    assert query["rank"] == "8" and query["name"] == "linked-export" and query["data"] == "task:arith:seed"
    plan, export = at.session_state[S.PLAN].plan, at.session_state[S.EXPORT]

    fresh = _opened(query)
    assert_ok(fresh)
    ss = fresh.session_state
    assert ss[S.TEACHER]["ref"] == "demo:teacher" and ss[S.STUDENT]["ref"] == "demo:student"
    assert ss[S.SENS].cached and ss[S.SENS].id == at.session_state[S.SENS].id  # from the cache
    assert ss[S.W_RANK] == 8 and ss[S.W_STRUCTURE] == "rowcol" and not ss[S.W_MODULE_PREFIX + "embed_tokens"]
    fresh.switch_page("pages/5_Export.py").run()
    assert_ok(fresh)
    assert fresh.session_state[S.PLAN].plan.layer_map == plan.layer_map
    assert [m.student_module for m in fresh.session_state[S.PLAN].plan.modules] == [m.student_module for m in plan.modules]
    assert fresh.session_state[S.EXPORT]["dir"] == export["dir"]  # the zip it made is offered again
    assert any(b.label == "Download as zip" for b in fresh.get("download_button"))
    assert dict(fresh.query_params) == query

    recipe, problems = from_query(query)
    assert not problems
    path = tmp_path / "recipe.json"
    path.write_text(to_json(recipe))
    assert cli.main(["extract", "--recipe", str(path), "--out", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    app_adapter = load_file(str(Path(export["dir"]) / "adapter_model.safetensors"))
    cli_adapter = load_file(str(tmp_path / "cli" / "adapter_model.safetensors"))
    assert app_adapter.keys() == cli_adapter.keys()
    assert all((app_adapter[k] == cli_adapter[k]).all() for k in app_adapter)
    app_manifest = json.loads((Path(export["dir"]) / "paraknow.json").read_text())
    cli_manifest = json.loads((tmp_path / "cli" / "paraknow.json").read_text())
    for key in ("layer_map", "rank", "alpha", "structure", "samples", "data_sha256", "roles"):
        assert app_manifest[key] == cli_manifest[key], key


def test_a_bad_value_in_the_link_is_named_and_the_rest_restored():
    at = _opened({"teacher": "demo:teacher", "student": "demo:student", "data": "task:facts:seed",
                  "rank": "zero", "samples": "5"})
    assert_ok(at)
    warnings = " ".join(str(w.value) for w in at.sidebar.warning)
    assert "'rank'" in warnings
    assert at.session_state[S.TEACHER]["ref"] == "demo:teacher" and at.session_state[S.W_SAMPLES] == 5
    assert at.session_state[S.W_TASK] == "facts" and at.session_state[S.SENS] is None  # not computed yet
    at.switch_page("pages/3_Sensitivity.py").run()
    assert_ok(at)
    assert any("press **Compute sensitivity**" in str(i.value) for i in at.info)


PHISH = "[Click here to repair your session](https://evil.example/phish)"


def _rendered_markdown(at: AppTest) -> list[str]:
    """Every body the app handed to Streamlit's markdown renderer (text elements are literal)."""
    kinds = ("markdown", "caption", "warning", "info", "success", "error")
    return [str(e.value) for kind in kinds for e in at.get(kind)] + [str(e.value) for kind in kinds
                                                                     for e in at.sidebar.get(kind)]


def test_a_link_naming_files_or_hub_ids_loads_nothing_until_clicked_and_renders_no_markdown(tmp_path):
    from tiny import SEED_RECORDS

    from paraknow.core.records import to_jsonl

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(to_jsonl(SEED_RECORDS))
    at = _opened({"teacher": PHISH, "student": str(tmp_path / "model"), "data": str(seeds)})
    assert_ok(at)
    assert at.session_state[S.TEACHER] is None and at.session_state[S.STUDENT] is None  # nothing loaded
    shown = " ".join(str(t.value) for t in at.sidebar.text)
    assert f"teacher: {PHISH}" in shown and f"student: {tmp_path / 'model'}" in shown and str(seeds) in shown
    assert not any("](" in body for body in _rendered_markdown(at))  # no markdown link from the link
    assert at.query_params["teacher"] == PHISH  # the link stays in the address bar until answered
    at.button(key="w_link_load").click().run()
    assert_ok(at)
    notice = " ".join(str(w.value) for w in at.sidebar.warning)
    assert "could not be used" in notice and "\\[Click here" in notice  # quoted, escaped
    assert not any("](" in body for body in _rendered_markdown(at))
    assert at.session_state[S.TEACHER] is None


def test_a_held_link_loads_on_one_click():
    at = _opened({"teacher": "demo:teacher", "student": "demo:student", "data": "seeds-that-are-not-there.jsonl"})
    assert at.session_state[S.TEACHER] is None
    assert "seed data: seeds-that-are-not-there.jsonl" in " ".join(str(t.value) for t in at.sidebar.text)
    at.button(key="w_link_load").click().run()
    assert_ok(at)
    assert at.session_state[S.TEACHER]["ref"] == "demo:teacher"  # loaded once asked
    assert md_escape("'seeds-that-are-not-there.jsonl'") in " ".join(str(w.value) for w in at.sidebar.warning)
    assert all(b.key != "w_link_load" for b in at.sidebar.button)
