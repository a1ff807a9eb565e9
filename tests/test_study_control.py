"""Background studies for the app: started as their own process, stopped through DIR/STOP (also
inside a running training), resumed without rerunning finished cells, read back from disk."""
import json
import subprocess
import sys

import pytest
from study_fixtures import study_inputs, tiny_recipe

from paraknow.core.errors import ParaknowError
from paraknow.study import parse_recipe
from paraknow.study.cells import STUDY_FILE
from paraknow.study.control import read_status, read_study, start_study, stop_study
from paraknow.study.plan import plan_cells, train_config
from paraknow.study.runner import _stop_relay


def small_recipe(paths, **changes):
    return parse_recipe(tiny_recipe(paths, arms=[{"name": "vanilla", "init": "vanilla"},
                                                 {"name": "untuned", "init": "untuned"}], **changes))


def test_a_stop_request_reaches_a_running_training(tmp_path):
    from paraknow.runs.train import train

    paths = study_inputs(tmp_path / "in")
    recipe = parse_recipe(tiny_recipe(paths, train={**tiny_recipe(paths)["train"], "epochs": 3}))
    out = tmp_path / "study"
    out.mkdir()
    (out / "STOP").write_text("now\n")
    run_dir = out / "run"
    config = train_config(recipe, recipe.arm("vanilla"), 0, 1e-3, "vanilla", out=str(run_dir))
    outcome = train(config, callbacks=[_stop_relay(out, run_dir)])
    assert outcome.state == "stopped" and outcome.status["step"] == 1  # 3 epochs would be 6 steps
    assert (run_dir / "adapter" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_background_study_stops_and_resumes(tmp_path):
    paths = study_inputs(tmp_path / "in")
    recipe = small_recipe(paths)
    out = tmp_path / "study"
    proc = start_study(recipe, out)
    assert read_status(out)["state"] in ("starting", "running")
    with pytest.raises(ParaknowError, match="already running"):
        start_study(recipe, out, resume=True)
    stop_study(out)
    assert proc.wait() == 1  # stopped is not finished
    assert "the study stopped with 3 of 3 cells not finished" in (out / "stdout.log").read_text()
    view = read_study(out)
    assert view.state == "stopped" and not view.live
    assert view.status["cells_run"] == 0  # the stop came before the first cell
    assert all(c["state"] == "pending" for c in view.results["cells"])

    proc = start_study(recipe, out, resume=True)
    assert proc.wait() == 0
    view = read_study(out)
    assert view.state == "finished" and view.status["cells_run"] == len(plan_cells(recipe)) == 3
    assert all(c["state"] == "finished" for c in view.results["cells"])
    assert json.loads((out / "results.json").read_text())["cells"] == view.results["cells"]
    assert (out / "report.html").is_file() and "[3/3] vanilla seed 1" in (out / "stdout.log").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/cell.json")}
    proc = start_study(recipe, out, resume=True)  # nothing left: no cell is touched
    assert proc.wait() == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("cells/*/cell.json")} == stamps


def test_refusals_come_before_anything_is_written(tmp_path):
    paths = study_inputs(tmp_path / "in")
    out = tmp_path / "study"
    with pytest.raises(ParaknowError, match="budget"):
        start_study(small_recipe(paths, budget_minutes=1e-9), out)  # any measured estimate is over it
    assert not out.exists()


def test_a_study_whose_process_died_reads_failed_once_and_stopped_when_asked(tmp_path):
    """The job substrate's liveness check, on study.json: settled once and written back."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / STUDY_FILE).write_text(json.dumps({"state": "running", "pid": gone.pid, "pid_start": None}))
    status = read_status(tmp_path)
    assert status["state"] == "failed" and f"pid {gone.pid}" in status["error"]
    assert json.loads((tmp_path / STUDY_FILE).read_text())["state"] == "failed"
    (tmp_path / STUDY_FILE).write_text(json.dumps({"state": "running", "pid": gone.pid, "pid_start": None}))
    (tmp_path / "STOP").write_text("")
    assert read_status(tmp_path)["state"] == "stopped"
    assert read_status(tmp_path / "nothing")["state"] == "missing"


@pytest.mark.slow
def test_sigterm_during_a_cell_stops_the_study_not_just_the_cell(tmp_path):
    """`kill PID` on a study process: the training stops at its next step, that cell is recorded
    stopped, and no further cell starts (the study is `stopped`, resumable)."""
    import signal

    from waiting import wait_until

    paths = study_inputs(tmp_path / "in")
    recipe = small_recipe(paths, train={**tiny_recipe(paths)["train"], "epochs": 200})  # 400 steps per cell
    out = tmp_path / "study"
    proc = start_study(recipe, out)
    cell = plan_cells(recipe)[1]
    assert cell.arm == "vanilla" and cell.seed == 0
    metrics = out / "cells" / cell.cell_id / "run" / "metrics.jsonl"

    def training() -> bool:  # the first cell is training (and the study has not died before it)
        assert proc.poll() is None, (out / "stdout.log").read_text()[-2000:]
        return metrics.is_file() and metrics.read_text().count("\n") >= 2

    wait_until(training, 600, f"two training steps in {metrics}")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 1
    assert "the study stopped with 2 of 3 cells not finished" in (out / "stdout.log").read_text()
    view = read_study(out)
    states = {c["arm"] + str(c["seed"]): c["state"] for c in view.results["cells"]}
    assert view.state == "stopped" and states == {"untunedNone": "finished", "vanilla0": "stopped",
                                                  "vanilla1": "pending"}
