"""The Streamlit app driven through its widgets with streamlit.testing.v1.AppTest (no browser).

Uses the built-in demo pair (demo:teacher / demo:student). While developing without it, point
PARAKNOW_APP_TEACHER / PARAKNOW_APP_STUDENT at other local models (see ui/state.py).
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest
from apptest import assert_ok, open_page
from conftest import finish_jobs
from streamlit.testing.v1 import AppTest
from tiny import marked_map_file

from paraknow.core.errors import ParaknowError
from ui import ops
from ui import state as S

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["pages/2_Models.py", "pages/3_Sensitivity.py", "pages/4_Mapping.py", "pages/5_Export.py"]
TIMEOUT = 600


def _app() -> AppTest:
    return open_page(None, TIMEOUT)


def _errors(at: AppTest) -> str:
    return " | ".join(str(e.value) for e in at.error)


def test_every_page_renders_before_anything_is_loaded():
    at = _app()
    assert any("Quick start" in str(b.label) for b in at.button)
    for page in PAGES:
        at.switch_page(page).run()
        assert_ok(at)
    # pages that need models say so and point back
    at.switch_page("pages/4_Mapping.py").run()
    assert any("Load a teacher and a student first" in str(w.value) for w in at.warning)
    assert any("This session" in str(m.value) for m in at.sidebar.markdown)  # drawn even after an early stop


@pytest.mark.slow
def test_main_flow_quick_start_sensitivity_mapping_export():
    at = _app()
    at.button(key="w_home_quickstart").click().run()
    assert_ok(at)
    ss = at.session_state
    assert ss[S.TEACHER]["ref"] == S.default_refs()[0] and ss[S.SENS] is not None and ss[S.PLAN] is not None
    assert ss[S.SENS].config.samples == 32 and ss[S.SENS].config.metric == "taylor-abs"
    n_t = ss[S.TEACHER_INFO].n_layers

    at.switch_page("pages/2_Models.py").run()
    assert_ok(at)

    # Sensitivity: toggles, drill-down, a recomputation and a second task to compare
    at.switch_page("pages/3_Sensitivity.py").run()
    assert_ok(at)
    at.toggle(key=S.W_LOG).set_value(True).run()
    at.selectbox(key=S.W_DRILL_MODULE).set_value("down_proj").run()
    at.selectbox(key=S.W_DRILL_LAYER).set_value(n_t - 1).run()
    assert_ok(at)
    assert any(f"model.layers.{n_t - 1}.mlp.down_proj" in str(c.value) for c in at.caption)
    at.number_input(key=S.W_SAMPLES).set_value(8).run()
    finish_jobs(at.button(key="w_sens_compute").click().run())
    assert_ok(at)
    assert at.session_state[S.SENS].config.samples == 8
    at.selectbox(key=S.W_CMP_TASK).set_value("facts").run()
    finish_jobs(at.button(key="w_cmp_compute").click().run())
    assert_ok(at)
    assert at.session_state[S.SENS_B].label == "task:facts:seed"
    assert any("Most task-specific layers" in str(m.value) for m in at.markdown)

    # Mapping: strategy, structure, a manual block position, manual table, layer similarity
    at.switch_page("pages/4_Mapping.py").run()
    assert_ok(at)
    at.selectbox(key=S.W_STRATEGY).set_value("uniform").run()
    assert_ok(at)
    n_s = at.session_state[S.STUDENT_INFO].n_layers
    plan = at.session_state[S.PLAN].plan
    assert plan.layer_map[0] == 0 and plan.layer_map[-1] == n_t - 1 and len(plan.layer_map) == n_s
    at.selectbox(key=S.W_STRUCTURE).set_value("rowcol").run()
    assert_ok(at)
    at.selectbox(key=S.W_STRUCTURE).set_value("submatrix").run()
    module = at.session_state[S.W_PREVIEW]
    before = next(m for m in at.session_state[S.PLAN].plan.modules if m.student_module == module)
    at.checkbox(key=f"{S.W_OVR_ON}::{module}").check().run()
    assert_ok(at)
    at.slider(key=f"{S.W_OVR_ROW}::{module}").set_value(0).run()
    at.slider(key=f"{S.W_OVR_COL}::{module}").set_value(0).run()
    assert_ok(at)
    assert at.session_state[S.OVERRIDES][module] == (0, 0)
    after = next(m for m in at.session_state[S.PLAN].plan.modules if m.student_module == module)
    assert after.selection.block() == (0, 0) and after.captured <= before.captured + 1e-12
    finish_jobs(at.button(key="w_map_cka").click().run())
    assert_ok(at)
    assert at.session_state[S.CKA]["matrix"].shape == (n_t, n_s)
    at.button(key="w_map_to_manual").click().run()
    assert_ok(at)
    assert at.session_state[S.W_STRATEGY] == "manual"
    assert at.session_state[S.MANUAL_MAP] == plan.layer_map

    # Export: a bad name is explained, a good one writes a valid export; verify in residual mode
    at.switch_page("pages/5_Export.py").run()
    assert_ok(at)
    at.text_input(key=S.W_NAME).set_value("bad name!").run()
    at.button(key="w_exp_run").click().run()
    assert "not a usable export name" in _errors(at)
    at.text_input(key=S.W_NAME).set_value("apptest-export").run()
    finish_jobs(at.button(key="w_exp_run").click().run())
    assert_ok(at)
    export = at.session_state[S.EXPORT]
    out = Path(export["dir"])
    assert out.name == "apptest-export" and out.is_dir()
    manifest = json.loads((out / "paraknow.json").read_text())
    assert manifest["mode"] == "residual" and manifest["rank"] == 16 and manifest["structure"] == "submatrix"
    assert manifest["layer_map"] == plan.layer_map and manifest["samples"] == 8
    assert manifest["overrides"][module] == [0, 0] and manifest["modules"][module]["block"] == [0, 0]
    assert (out / "adapter_model.safetensors").is_file() and (out / "residual" / "adapter_config.json").is_file()
    assert all(0 < m["energy"] <= 1 for m in manifest["modules"].values())
    at.button(key="w_exp_run").click().run()  # same name again: explained, nothing overwritten
    assert "already exists" in _errors(at)
    finish_jobs(at.button(key="w_exp_verify").click().run())
    assert not at.exception
    verify = at.session_state[S.VERIFY]
    assert verify.unchanged and verify.max_change < 1e-3, verify
    assert any("outputs are unchanged" in str(s.value) for s in at.success)
    at.selectbox(key=S.W_MODE).set_value("additive").run()
    at.text_input(key=S.W_NAME).set_value("apptest-additive").run()
    finish_jobs(at.button(key="w_exp_run").click().run())
    assert_ok(at)
    assert not (Path(at.session_state[S.EXPORT]["dir"]) / "residual").exists()
    finish_jobs(at.button(key="w_exp_verify").click().run())
    assert_ok(at)
    assert at.session_state[S.VERIFY].max_change > 1e-4  # the teacher's knowledge is in the outputs now
    assert any("Additive mode" in str(i.value) for i in at.info)

    at.switch_page("pages/3_Sensitivity.py").run()  # state survives moving back
    assert_ok(at)
    assert at.session_state[S.EXPORT]["name"] == "apptest-additive"
    assert at.session_state[S.EXPORTS_MADE] == ["apptest-export", "apptest-additive"]


@pytest.mark.slow
def test_user_mistakes_are_explained():
    at = _app()
    at.switch_page("pages/2_Models.py").run()
    at.radio(key=S.model_key("teacher", "kind")).set_value(S.KIND_LOCAL).run()
    at.text_input(key=S.model_key("teacher", "local")).set_value("/nonexistent/model").run()
    assert "model path not found" in _errors(at)
    assert at.button(key="w_models_load").disabled
    at.radio(key=S.model_key("teacher", "kind")).set_value(S.KIND_GGUF).run()
    at.text_input(key=S.model_key("teacher", "gguf")).set_value("/nonexistent/model.gguf").run()
    assert "GGUF file not found" in _errors(at)
    at.radio(key=S.model_key("teacher", "kind")).set_value(S.KIND_HUB).run()
    at.text_input(key=S.model_key("teacher", "hub")).set_value("org/name").run()
    assert not at.error and any("Hub ids need network" in str(i.value) for i in at.info)  # nothing fetched yet
    S_ref = S.default_refs()[0]
    at.radio(key=S.model_key("teacher", "kind")).set_value(S.kind_of(S_ref)).run()
    if S.kind_of(S_ref) == S.KIND_LOCAL:
        at.text_input(key=S.model_key("teacher", "local")).set_value(S_ref).run()
    assert_ok(at)
    at.button(key="w_models_load").click().run()
    assert_ok(at)
    assert at.session_state[S.TEACHER]["ref"] == S_ref

    at.switch_page("pages/3_Sensitivity.py").run()
    at.radio(key=S.W_SOURCE).set_value("Paste JSONL").run()
    at.text_area(key=S.W_PASTE).set_value('{"prompt": "a", "completion": "b"}\nnot json\n').run()
    assert "line 2" in _errors(at)
    at.text_area(key=S.W_PASTE).set_value('{"prompt": "What is 2 plus 3?", "completion": "5"}\n'
                                          '{"text": "two plus three is five"}\n').run()
    assert_ok(at)
    at.button(key="w_sens_compute").click().run()  # 32 samples asked, 2 given
    assert "only 2" in _errors(at)
    at.number_input(key=S.W_SAMPLES).set_value(2).run()
    finish_jobs(at.button(key="w_sens_compute").click().run())
    assert_ok(at)
    assert at.session_state[S.SENS].label == "pasted"

    at.switch_page("pages/5_Export.py").run()
    at.number_input(key=S.W_RANK).set_value(4096).run()
    assert "lower the rank" in _errors(at)
    at.number_input(key=S.W_RANK).set_value(8).run()
    assert_ok(at)


def test_export_helpers(tmp_path):
    assert ops.slug("demo:teacher") == "demo-teacher"
    assert ops.slug("/x/y/SmolLM2.Q4.gguf") == "SmolLM2.Q4"
    assert ops.default_export_name("t", "s", "upload:seed_32.jsonl", "rowcol") == "t-to-s-upload-seed_32-rowcol"
    assert ops.default_export_name("demo:teacher", "demo:student", "task:arith:seed", "submatrix") == \
        "demo-teacher-to-demo-student-arith-submatrix"
    assert ops.check_export_name(" ok-name_1.2 ") == "ok-name_1.2"
    for bad in ("", "../x", "a b", ".hidden", "x" * 81):
        with pytest.raises(ParaknowError):
            ops.check_export_name(bad)
    d = tmp_path / "exports" / "e1"
    (d / "residual").mkdir(parents=True)
    (d / "paraknow.json").write_text(json.dumps({"created": "2026-01-01", "rank": 16, "modules": {"m": {}}}))
    (d / "residual" / "adapter_config.json").write_text("{}")
    (tmp_path / "exports" / ".e2.tmp").mkdir()
    names = zipfile.ZipFile(io.BytesIO(ops.zip_dir(d))).namelist()
    assert sorted(names) == ["e1/paraknow.json", "e1/residual/adapter_config.json"]
    listed = ops.list_exports(tmp_path / "exports")
    assert [e["name"] for e in listed] == ["e1"] and listed[0]["modules"] == 1
    with pytest.raises(ParaknowError):
        ops.zip_dir(tmp_path / "missing")


def test_damaged_model_files_show_the_same_message_as_the_cli(tmp_path):
    from tiny import make_tokenizer, tiny_llama

    from paraknow.core.models import load_config

    damaged = tmp_path / "damaged"
    tiny_llama().save_pretrained(damaged)
    make_tokenizer().save_pretrained(damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"GGUF" + bytes([3, 0, 0, 0]) + bytes(range(200)))
    at = _app()
    at.switch_page("pages/2_Models.py").run()
    for kind, field, ref in ((S.KIND_LOCAL, "local", damaged), (S.KIND_GGUF, "gguf", gguf)):
        with pytest.raises(ParaknowError) as cli_error:
            load_config(str(ref))
        at.radio(key=S.model_key("teacher", "kind")).set_value(kind).run()
        at.text_input(key=S.model_key("teacher", field)).set_value(str(ref)).run()
        assert str(cli_error.value) in _errors(at)
        assert not at.exception


def test_cache_panel_clears_a_kind_and_keeps_entries_in_use():
    from paraknow.core import cache
    from paraknow.core.paths import cache_dir

    for name in ("a", "b"):
        marked_map_file(cache_dir("sensitivity") / f"{name}.safetensors", 1024)
    running = cache_dir("runs") / "20260101-running"
    running.mkdir()
    cache.mark_entry(running)
    (running / "spec.json").write_text('{"student": "demo:student", "data": "task:arith"}')
    (running / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid()}))
    at = _app()
    assert any("Cache: 3 entries" in str(e.label) for e in at.expander)
    at.selectbox(key=S.W_CACHE_KIND).set_value("sensitivity").run()
    at.button(key="w_cache_clear").click().run()
    assert_ok(at)
    assert any("Removed 2 sensitivity entries (2.0 KB)" in str(s.value) for s in at.success)
    at.selectbox(key=S.W_CACHE_KIND).set_value("runs").run()
    at.button(key="w_cache_clear").click().run()
    assert any("Removed 0 runs entries (0 B); kept 1 in use" in str(s.value) for s in at.success)  # still running
    assert [e.name for e in cache.list_entries()] == ["20260101-running"]
