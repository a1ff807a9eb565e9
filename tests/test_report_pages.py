"""The "Download report" action of the Sensitivity, Mapping, Export and Fine-tune pages (AppTest):
it packs every chart the page shows, and image export is offered or its absence explained."""
from __future__ import annotations

import json
import time

import pytest
from apptest import APP, assert_ok
from conftest import finish_jobs
from streamlit.testing.v1 import AppTest
from test_app import TIMEOUT

from paraknow.core.fsio import atomic_write_json
from paraknow.htmlreport import image_export_unavailable
from paraknow.runs import jobs
from paraknow.runs.train_config import TrainConfig
from ui import state as S


def _report_button(at: AppTest, slug: str):
    buttons = [b for b in at.get("download_button") if f"w_report_{slug}" in b.proto.id]
    assert len(buttons) == 1, [b.proto.id for b in at.get("download_button")]
    return buttons[0]


def _charts_packed(at: AppTest, slug: str) -> int:
    label = _report_button(at, slug).proto.label  # "Download report (N charts)"
    return int(label.split("(")[1].split()[0])


def _image_controls(at: AppTest, slug: str) -> bool:
    keys = {s.key for s in at.selectbox}
    return f"w_report_img_{slug}" in keys


@pytest.mark.slow
def test_report_on_sensitivity_mapping_and_export():
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.button(key="w_home_quickstart").click().run()
    assert_ok(at)
    assert not at.get("download_button") or not any("w_report" in b.proto.id for b in at.get("download_button"))
    at.switch_page("pages/3_Sensitivity.py").run()
    assert_ok(at)
    assert _charts_packed(at, "sensitivity") == len(at.get("plotly_chart")) == 4  # grid, layers, groups, matrix
    finish_jobs(at.button(key="w_cmp_compute").click().run())  # a second task: two more charts
    assert_ok(at)
    assert _charts_packed(at, "sensitivity") == len(at.get("plotly_chart")) == 6
    available = image_export_unavailable() is None
    assert _image_controls(at, "sensitivity") == available
    if available:
        titles = at.selectbox(key="w_report_img_sensitivity").options
        assert len(titles) == 6 and len(set(titles)) == 6
    else:
        assert any("Chart images (PNG/SVG) are unavailable" in str(c.value) for c in at.caption)

    at.switch_page("pages/4_Mapping.py").run()
    assert_ok(at)
    assert _charts_packed(at, "mapping") == len(at.get("plotly_chart")) == 3  # diagram, preview, captured
    at.switch_page("pages/5_Export.py").run()
    assert_ok(at)
    assert not any("w_report" in b.proto.id for b in at.get("download_button"))  # nothing exported yet
    at.text_input(key=S.W_NAME).set_value("report-export").run()
    finish_jobs(at.button(key="w_exp_run").click().run())
    assert_ok(at)
    assert _charts_packed(at, "export") == len(at.get("plotly_chart")) == 2  # energy, spectra


def test_report_on_fine_tune_and_the_reason_when_images_are_unavailable(monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chrome")
    run_dir = jobs.new_run(TrainConfig(student="demo:student", data="task:arith:train"), label="done")
    atomic_write_json(run_dir / "status.json", {"state": "finished", "created": time.time(), "step": 2,
                                                "max_steps": 2, "final_eval": {"accuracy": 0.5, "loss": 1.0, "n": 4}})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0 / s, "lr": 1e-4}) + "\n"
                                                   for s in (1, 2)))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/6_Fine-tune.py").run()
    assert_ok(at)
    assert _charts_packed(at, "fine-tune") == len(at.get("plotly_chart")) == 1  # the curves
    assert not _image_controls(at, "fine-tune")
    assert any("BROWSER_PATH names /nonexistent/chrome" in str(c.value) and "HTML report" in str(c.value)
               for c in at.caption)
