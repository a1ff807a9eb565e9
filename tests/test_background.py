"""Background jobs for the pages (paraknow/runs/background.py): a separate process per content key,
attached to by a second start, cancelled only by `cancel`, failures recorded in one line."""
from __future__ import annotations

import os
import signal
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from waiting import wait_until

from paraknow.core.data import load_records
from paraknow.core.jobdir import read_json
from paraknow.core.records import to_jsonl
from paraknow.runs import background
from paraknow.runs.background_work import RECORDS_FILE
from paraknow.transfer.sensitivity import SensitivityConfig, compute_sensitivity
from paraknow.transfer.sensitivity_files import load_sensitivity

WAIT_S = 300  # generous: the job's own progress decides, and the machine may be busy
TEACHER = {"ref": "demo:teacher", "dtype": "float32", "device": "cpu"}


def _start_map(key: str, records: list[dict], config: SensitivityConfig, model=TEACHER):
    return background.start("sensitivity", key, {"model": model, "config": asdict(config)},
                            {RECORDS_FILE: to_jsonl(records[:config.samples])})


@pytest.mark.slow
def test_a_second_start_attaches_and_the_map_equals_the_in_process_one():
    from paraknow.core.models import load_model

    records = load_records("task:arith:seed")
    config = SensitivityConfig(samples=3, max_length=64)
    first = _start_map("k-attach", records, config)
    second = _start_map("k-attach", records, config)
    assert first.state == second.state == "running" and first.dir == second.dir
    done = background.wait("sensitivity", "k-attach")
    assert done.state == "finished", done.error
    assert done.seconds is not None and done.seconds > 0
    launches = (done.dir / "stdout.log").read_text().count("$ ")
    assert launches == 1  # one process: the second start attached instead of starting another
    scores, meta = load_sensitivity(done.result["path"])
    model, tokenizer = load_model("demo:teacher")
    expected = compute_sensitivity(model, tokenizer, records, config)
    assert scores.keys() == expected.keys()
    assert all(torch.allclose(scores[k], expected[k], rtol=1e-5, atol=1e-8) for k in expected)
    assert meta["samples"] == 3
    assert background.live_jobs() == []


@pytest.mark.slow
def test_cancel_stops_a_running_job_and_caches_nothing():
    records = load_records("task:arith:train")
    config = SensitivityConfig(samples=400, max_length=64)
    view = _start_map("k-cancel", records, config)
    assert view.live
    wait_until(lambda: background.read("sensitivity", "k-cancel").done >= 1, WAIT_S, "the first sample")
    background.cancel("sensitivity", "k-cancel")
    ended = background.wait("sensitivity", "k-cancel")
    assert ended.state == "stopped" and ended.error is None
    assert not ended.result
    from paraknow.core.paths import cache_dir

    assert not list(cache_dir("sensitivity").glob("*.safetensors"))
    # started again, the same key runs afresh (the page offers Compute again)
    again = _start_map("k-cancel", records, SensitivityConfig(samples=2, max_length=64))
    assert again.live and not (again.dir / "STOP").exists()
    assert background.wait("sensitivity", "k-cancel").state == "finished"


@pytest.mark.slow
def test_a_bad_reference_fails_with_one_line_and_a_killed_job_reads_failed():
    config = SensitivityConfig(samples=1, max_length=32)
    records = load_records("task:arith:seed")
    bad = _start_map("k-bad", records, config, model={**TEACHER, "ref": "/nonexistent/model"})
    failed = background.wait("sensitivity", bad.key)
    assert failed.state == "failed" and "not found" in failed.error and "\n" not in failed.error

    slow = _start_map("k-kill", load_records("task:arith:train"), SensitivityConfig(samples=400, max_length=64))
    pid = wait_until(lambda: (read_json(slow.dir / "status.json") or {}).get("pid"), WAIT_S, "the pid")
    os.killpg(pid, signal.SIGKILL)  # no chance to write its state: the liveness check decides
    dead = background.wait("sensitivity", "k-kill")
    assert dead.state == "failed" and "ended without finishing" in dead.error


def test_content_keys_ignore_key_order_and_unknown_kinds_are_refused():
    import pytest

    from paraknow.core.errors import ParaknowError

    assert background.content_key({"a": 1, "b": [1, 2]}) == background.content_key({"b": [1, 2], "a": 1})
    assert background.content_key({"a": 1}) != background.content_key({"a": 2})
    with pytest.raises(ParaknowError, match="unknown background job kind"):
        background.start("nope", "k", {})
    assert background.read("sensitivity", "never-started").state == "missing"


def _zombie_or_gone(pid: int) -> bool:
    """The process has exited and waits to be reaped (or is gone). A leader whose own thread ended
    while others still run also reads Z, so its thread count must be down to one too."""
    try:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except OSError:
        return True
    return status["State"].strip().startswith(("Z", "X")) and status["Threads"].strip() == "1"


@pytest.mark.slow
def test_any_liveness_check_reaps_every_finished_child():
    """Finished background processes (jobs, queue workers) do not linger as zombies under the server."""
    from paraknow.core import processes

    records = load_records("task:arith:seed")
    a = _start_map("k-reap-a", records, SensitivityConfig(samples=1, max_length=32))
    b = _start_map("k-reap-b", records, SensitivityConfig(samples=1, max_length=32))
    pid_b = wait_until(lambda: (read_json(b.dir / "status.json") or {}).get("pid"), WAIT_S, "the pid")
    assert pid_b in processes.children
    wait_until(lambda: _zombie_or_gone(pid_b), WAIT_S, "b's process to end")  # ended, not yet reaped
    background.wait("sensitivity", a.key)  # checks a's liveness only
    assert pid_b not in processes.children and not Path(f"/proc/{pid_b}").exists()
