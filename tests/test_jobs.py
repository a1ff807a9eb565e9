"""Background runs (paraknow.runs.jobs): on-disk state, reattach, queue order, stop, liveness."""
import json
import os
import signal
import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path

import pytest
from tiny import SEED_RECORDS, make_tokenizer, tiny_llama
from waiting import wait_until

from paraknow.core import jobdir
from paraknow.core.errors import ParaknowError
from paraknow.core.jobdir import LOG_FILE
from paraknow.runs import jobs, rundir
from paraknow.runs.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # child runs: steadier on a busy shared CPU
    student = tmp_path / "student"
    tiny_llama(layers=1, hidden=32, ffn=64, heads=2, kv_heads=1).save_pretrained(student)
    make_tokenizer().save_pretrained(student)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in SEED_RECORDS[:4]))
    return student, data


def config(setup, **overrides):
    student, data = setup
    settings = dict(student=str(student), data=str(data), epochs=1, batch=2, micro_batch=2, rank=2, alpha=4,
                    max_length=64, device="cpu")
    settings.update(overrides)
    return TrainConfig(**settings)


wait_for = wait_until  # the name test_executors.py and test_executor_pages.py import from here


@pytest.mark.slow
def test_new_run_is_on_disk_and_seen_by_another_process(setup, tmp_path):
    run_dir = jobs.new_run(config(setup), label="first")
    assert run_dir.parent == jobs.runs_root()
    assert jobs.read_status(run_dir)["state"] == "queued"
    spec = jobs.read_spec(run_dir)
    assert spec["label"] == "first" and spec["out"] == str(run_dir) and spec["rank"] == 2
    # a run created by another process is listed here (reattach = read from disk)
    code = ("from paraknow.runs import jobs; from paraknow.runs.train import TrainConfig; import json, sys; "
            "c = TrainConfig(**json.loads(sys.argv[1])); print(jobs.new_run(c, label='other'))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(config(setup).to_dict())], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    other = Path(out.stdout.strip().splitlines()[-1])
    runs = jobs.list_runs(resume_queue=False)
    assert [r.run_dir for r in runs] == [other, run_dir]  # newest first
    assert runs[0].label == "other" and runs[0].state == "queued" and runs[0].method == "vanilla"
    assert runs[1].to_row()["label"] == "first"
    # bad input: nothing is created
    with pytest.raises(ParaknowError, match="not a multiple"):
        jobs.new_run(config(setup, batch=3))
    assert len(jobs.list_runs(resume_queue=False)) == 2


def test_stop_a_queued_run_marks_it_stopped(setup):
    run_dir = jobs.new_run(config(setup))
    status = jobs.stop(run_dir)
    assert status["state"] == "stopped" and (run_dir / "STOP").exists()
    assert jobs.read_status(run_dir)["state"] == "stopped"
    assert jobs.ensure_worker() is None  # nothing queued: no worker
    with pytest.raises(ParaknowError, match="not queued"):
        jobs.launch(run_dir)
    with pytest.raises(ParaknowError, match="no adapter"):
        rundir.adapter_zip(run_dir)


def test_read_metrics_tolerates_a_partial_last_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [row["step"] for row in rundir.read_metrics(tmp_path)] == [1, 2]
    assert rundir.read_metrics(tmp_path / "nowhere") == []


def test_dead_pid_reads_as_failed_and_is_persisted(setup):
    run_dir = jobs.new_run(config(setup))
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    status = json.loads((run_dir / "status.json").read_text())
    status.update(state="running", phase="training", pid=proc.pid)
    (run_dir / "status.json").write_text(json.dumps(status))
    assert jobs.read_status(run_dir)["state"] == "failed"
    saved = json.loads((run_dir / "status.json").read_text())
    assert saved["state"] == "failed"
    assert saved["error"] == f"the process (pid {proc.pid}) ended without finishing; see {run_dir / LOG_FILE}"


@pytest.mark.slow
def test_killed_run_becomes_failed_with_a_reason(setup):
    run_dir = jobs.new_run(config(setup, epochs=500))  # far longer than the test waits
    proc = jobs.launch(run_dir)
    try:
        assert jobs.read_status(run_dir)["pid"] == proc.pid
        wait_until(lambda: jobs.read_status(run_dir).get("step"), 90, "the first training step")
        status = jobs.read_status(run_dir)
        assert status["state"] == "running" and status["phase"] in ("training", "evaluating")
        assert status["max_steps"] == 1000 and status["eta_s"] is not None
    finally:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    status = jobs.read_status(run_dir)
    assert status["state"] == "failed"
    assert status["error"] == f"the process (pid {proc.pid}) ended without finishing; see {run_dir / LOG_FILE}"
    assert jobs.list_runs(resume_queue=False)[0].state == "failed"
    assert "train --spec" in (run_dir / "stdout.log").read_text()


@pytest.mark.slow
def test_queue_runs_one_after_another(setup):
    first = jobs.new_run(config(setup, label="a"))
    second = jobs.new_run(config(setup, label="b", init="pissa"))
    pid = jobs.ensure_worker()
    assert pid and jobs.ensure_worker() in (pid, None)  # never a second worker
    try:
        wait_until(lambda: all(jobs.read_status(d)["state"] in ("finished", "failed") for d in (first, second)),
                   150, "both queued runs to end")
        wait_until(lambda: jobs.worker_pid() is None, 30, "the worker to exit")
    finally:
        if jobs.worker_pid() not in (None, -1):
            os.kill(jobs.worker_pid(), signal.SIGKILL)
    a, b = jobs.read_status(first), jobs.read_status(second)
    assert a["state"] == b["state"] == "finished", (jobdir.read_log(first), jobdir.read_log(second))
    assert a["finished"] <= b["started"]  # one at a time, in creation order
    names = zipfile.ZipFile(BytesIO(rundir.adapter_zip(second))).namelist()
    assert "adapter/adapter_config.json" in names and "adapter/adapter_model.safetensors" in names
    assert "queue empty" in (jobs.runs_root() / "worker.log").read_text()


def test_compare_runs_groups_and_results(setup, tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "paraknow.json").write_text(json.dumps({"rank": 2, "alpha": 4, "mode": "residual"}))
    (export / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4,
                                                            "target_modules": ["q_proj", "v_proj"]}))
    student, data = setup
    group, run_dirs = jobs.compare_runs(str(student), str(data), export, seeds=(0, 1), start=False, epochs=1,
                                        batch=2, micro_batch=2, device="cpu")
    assert len(run_dirs) == 6
    specs = [jobs.read_spec(d) for d in run_dirs]
    assert {s["group"] for s in specs} == {group}
    assert [s["init"] for s in specs[:3]] == ["vanilla", "pissa", str(export)]
    assert all(s["rank"] == 2 and s["alpha"] == 4 for s in specs)
    for i, run_dir in enumerate(run_dirs):  # pretend they ran
        status = jobs.read_status(run_dir)
        status.update(state="finished", final_eval={"accuracy": 0.1 * i, "loss": 1.0 + i, "n": 10})
        (run_dir / "status.json").write_text(json.dumps(status))
    assert jobs.stop(run_dirs[5])["state"] == "finished"  # finished already: stays finished, no STOP file
    assert not (run_dirs[5] / "STOP").exists()
    results = jobs.group_results(group)
    assert results["complete"]
    pkt = results["methods"]["pkt"]
    assert pkt["accuracy"]["n"] == 2 and pkt["accuracy"]["mean"] == pytest.approx(0.35)
    assert pkt["accuracy"]["std"] == pytest.approx(0.3 * 2 ** -0.5) and pkt["loss"]["max"] == 6.0
    assert results["methods"]["vanilla"]["accuracy"]["min"] == 0.0
    assert jobs.group_results(group, jobs.list_runs(resume_queue=False)) == results  # runs already read: same
    with pytest.raises(ParaknowError, match="no runs in group"):
        jobs.group_results("nope")
    with pytest.raises(ParaknowError, match="no runs in group"):
        jobs.group_results("nope", jobs.list_runs(resume_queue=False))
