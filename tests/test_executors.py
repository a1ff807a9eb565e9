"""Executors (paraknow.runs.executors, docs/cluster.md): runs and study cells dispatched to a Ray
instance that the test starts must leave the run directory, the live metrics and STOP exactly as
the local executor does; without Ray, `--executor ray` is one line and exit code 2."""
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from study_fixtures import study_inputs, tiny_recipe, write_recipe
from test_jobs import config, setup, wait_for  # noqa: F401 (setup is a fixture)

from paraknow.cli import main as cli_main
from paraknow.core import jobdir
from paraknow.core.errors import ParaknowError
from paraknow.core.processes import pid_alive
from paraknow.runs import jobs, rundir
from paraknow.runs.executors import ExecutorConfig
from paraknow.study import parse_recipe, run_study

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed (pip install -e .[ray]); the Ray executor is optional")
NUMBERS = ("test_accuracy", "test_loss", "val_accuracy", "val_loss")


@pytest.fixture(scope="module")
def ray_address():
    """A one-CPU Ray instance for this module (its session files in a short /tmp folder: Ray's
    socket paths must stay under 108 characters); other processes join it by this address."""
    import ray

    temp = tempfile.mkdtemp(prefix="pk-ray-", dir="/tmp")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def files_of(run_dir: Path) -> list[str]:
    return sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())


def ray_mark(run_dir: Path) -> bool:
    """Whether stdout.log shows that the command ran inside a Ray task."""
    return "# ray task " in (run_dir / "stdout.log").read_text()


@needs_ray
@pytest.mark.slow
def test_a_queued_run_on_ray_has_the_local_runs_files_metrics_and_stop(setup, ray_address):
    local = jobs.new_run(config(setup, epochs=500, label="local"))  # far longer than the test waits
    remote = jobs.new_run(config(setup, epochs=500, label="ray"),
                          executor=ExecutorConfig("ray", address=ray_address))
    assert jobs.read_status(remote)["executor"] == {"executor": "ray", "address": ray_address, "cpus": 1.0,
                                                    "gpus": 0.0}
    proc = jobs.launch(local)
    worker = jobs.ensure_worker()  # the queue worker takes the Ray run (the local one is claimed already)
    try:
        for run_dir in (local, remote):  # live metrics: steps appear while the run is running
            wait_for(lambda: len(rundir.read_metrics(run_dir)) >= 3, 150, f"three training steps of {run_dir.name}")
            assert jobs.read_status(run_dir)["state"] == "running"
            jobs.stop(run_dir)
        for run_dir in (local, remote):
            wait_for(lambda: jobs.read_status(run_dir)["state"] != "running", 120, f"{run_dir.name} to stop")
        wait_for(lambda: jobs.worker_pid() is None, 60, "the worker to exit")
    finally:
        for pid in (proc.pid, worker):
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    proc.wait()
    statuses = {d: jobs.read_status(d) for d in (local, remote)}
    assert [s["state"] for s in statuses.values()] == ["stopped", "stopped"], (jobdir.read_log(local),
                                                                              jobdir.read_log(remote))
    assert files_of(local) == files_of(remote)
    assert "adapter/adapter_model.safetensors" in files_of(remote)
    assert statuses[local].keys() == statuses[remote].keys()
    assert statuses[remote]["host"] == socket.gethostname() and statuses[remote]["pid"] != worker
    assert statuses[remote]["step"] < statuses[remote]["max_steps"] == statuses[local]["max_steps"] == 1000
    spec = {d: jobs.read_spec(d) for d in (local, remote)}
    assert {k: v for k, v in spec[local].items() if k not in ("out", "label")} == \
        {k: v for k, v in spec[remote].items() if k not in ("out", "label")}
    metrics = {d: rundir.read_metrics(d) for d in (local, remote)}
    assert [row.keys() for row in metrics[local]][:3] == [row.keys() for row in metrics[remote]][:3]
    # the same entry point on the same data and seed: the same losses, step for step
    assert [row["loss"] for row in metrics[local][:3]] == pytest.approx([row["loss"] for row in metrics[remote][:3]],
                                                                      rel=1e-5)
    assert not ray_mark(local) and ray_mark(remote)
    assert "train --spec" in jobdir.read_log(remote)
    assert "state stopped" in (jobs.runs_root() / jobs.WORKER_LOG).read_text()


@needs_ray
@pytest.mark.slow
def test_train_cli_on_ray_finishes_with_the_train_summary(setup, ray_address, tmp_path, capsys):
    student, data = setup
    out = tmp_path / "run"
    args = ["train", "--student", str(student), "--data", str(data), "--out", str(out), "--epochs", "1",
            "--batch", "2", "--micro-batch", "2", "--rank", "2", "--alpha", "4", "--max-length", "64",
            "--device", "cpu", "--eval-data", str(data), "--eval-max-new-tokens", "2"]
    on_ray = [*args, "--executor", "ray", "--address", ray_address]
    assert cli_main(on_ray) == 0, (out / "stdout.log").read_text()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    status = jobs.read_status(out)
    assert summary == {"run_dir": str(out), "state": "finished", "steps": 2, "final_eval": status["final_eval"]}
    assert status["final_eval"]["n"] == 4 and ray_mark(out)
    assert rundir.read_metrics(out)[-1]["eval_accuracy"] == status["final_eval"]["accuracy"]
    # the same flags run locally (in this process) write the same files and summary fields
    assert cli_main([*args[:6], str(tmp_path / "local"), *args[7:]]) == 0
    local = jobs.read_status(tmp_path / "local")
    background = (".launched", "stdout.log")  # a foreground run prints to the terminal instead
    assert files_of(tmp_path / "local") == [f for f in files_of(out) if f not in background]
    assert local["final_eval"] == pytest.approx(status["final_eval"], rel=1e-5)
    # a run directory that exists is refused before anything is dispatched
    capsys.readouterr()
    assert cli_main(on_ray) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err


@needs_ray
@pytest.mark.slow
def test_study_cells_on_ray_give_the_local_numbers(tmp_path, ray_address, capsys):
    paths = study_inputs(tmp_path / "in")
    data = tiny_recipe(paths, seeds=[0], arms=[
        {"name": "vanilla", "init": "vanilla"}, {"name": "pkt", "init": "pkt", "extract": {"samples": 4}},
        {"name": "untuned", "init": "untuned"}])
    recipe = parse_recipe(data)
    local = run_study(recipe, tmp_path / "local")  # in this process, one cell after another
    # Ray tasks kept two at a time (the pool), and one after another from the CLI
    pooled = run_study(recipe, tmp_path / "pooled", workers=2, executor=ExecutorConfig("ray", address=ray_address))
    assert cli_main(["study", "--recipe", write_recipe(tmp_path / "recipe.json", data), "--out",
                     str(tmp_path / "cli"), "--executor", "ray", "--address", ray_address]) == 0
    assert "[3/3]" in capsys.readouterr().err
    one_by_one = json.loads((tmp_path / "cli" / "results.json").read_text())
    for name, remote in (("pooled", pooled), ("cli", one_by_one)):
        assert [c["state"] for c in remote["cells"]] == ["finished"] * 3
        for a, b in zip(local["cells"], remote["cells"]):
            assert (a["arm"], a["seed"]) == (b["arm"], b["seed"])
            assert [b[k] is None for k in NUMBERS] == [a[k] is None for k in NUMBERS]
            assert {k: b[k] for k in NUMBERS if b[k] is not None} == \
                pytest.approx({k: a[k] for k in NUMBERS if a[k] is not None}, rel=1e-5)
            if a["run_dir"]:
                assert files_of(tmp_path / "local" / a["run_dir"]) == files_of(tmp_path / name / b["run_dir"])
                # the local cell trained in this process, the Ray cell in a Ray worker
                pid = json.loads((tmp_path / name / b["run_dir"] / "status.json").read_text())["pid"]
                assert pid != os.getpid()
                assert json.loads((tmp_path / "local" / a["run_dir"] / "status.json").read_text())["pid"] == \
                    os.getpid()


@pytest.mark.slow
def test_executor_ray_without_ray_is_one_line_and_writes_nothing(setup, tmp_path):
    student, data = setup
    out = tmp_path / "run"
    code = ("import sys; sys.modules['ray'] = None; from paraknow.cli import main; "  # `import ray` now fails
            "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "train", "--student", str(student), "--data", str(data),
                             "--out", str(out), "--executor", "ray"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "needs Ray" in result.stderr and "pip install -e .[ray]" in result.stderr
    assert not out.exists()


def test_address_without_the_ray_executor_is_refused(setup, tmp_path, capsys):
    student, data = setup
    assert cli_main(["study", "--recipe", str(tmp_path / "r.json"), "--out", str(tmp_path / "s"),
                     "--address", "127.0.0.1:6379"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--executor ray" in err
    with pytest.raises(ParaknowError, match="--gpus must be a number at least 0"):
        jobs.new_run(config(setup), executor=ExecutorConfig("local", gpus=-1))
    with pytest.raises(ParaknowError, match="unknown executor 'slurm'"):
        ExecutorConfig("slurm").validate()
    with pytest.raises(ParaknowError, match="needs a GPU from Ray: add --gpus 1"):
        ExecutorConfig("ray").check_device("cuda:0")
    ExecutorConfig("ray", gpus=1).check_device("cuda:0")
    ExecutorConfig("local").check_device("cuda:0")
    assert list(jobs.runs_root().iterdir()) == []


def test_a_queued_run_remembers_its_executor(setup):
    run_dir = jobs.new_run(config(setup))
    assert ExecutorConfig.from_dict(jobs.read_status(run_dir)["executor"]) == ExecutorConfig()
    status = jobs.read_status(run_dir)
    status["executor"] = {"executor": "local", "queue": "gpu"}
    (run_dir / "status.json").write_text(json.dumps(status))
    with pytest.raises(ParaknowError, match="recorded executor"):
        jobs.launch(run_dir)
    status = jobs.read_status(run_dir)  # it cannot start anywhere: failed, so the queue moves on
    assert status["state"] == "failed" and "recorded executor" in status["error"]
    assert not (run_dir / jobs.CLAIM_FILE).exists()


@needs_ray
def test_an_unreachable_cluster_fails_the_queued_run_and_the_cli_writes_nothing(setup, tmp_path, capsys):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    run_dir = jobs.new_run(config(setup), executor=ExecutorConfig("ray", address=address))
    with pytest.raises(ParaknowError, match=f"nothing answers at the Ray address {address}"):
        jobs.launch(run_dir)
    assert jobs.read_status(run_dir)["state"] == "failed"
    student, data = setup
    assert cli_main(["train", "--student", str(student), "--data", str(data), "--out", str(tmp_path / "run"),
                     "--executor", "ray", "--address", address]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing answers" in err and not (tmp_path / "run").exists()
