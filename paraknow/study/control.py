"""Studies in the background, for the app: start one as its own process, read it back from disk
(state with a liveness check, partial results), stop it, resume it.

`start_study` runs every check of `prepare` first (bad input and an over-budget study are refused
here, with nothing written), writes DIR/recipe.json, then starts
`python -m paraknow study --recipe DIR/recipe.json --out DIR --resume` (plus the executor's flags,
docs/cluster.md) in a new session with its output in DIR/stdout.log, so the study survives page
reloads and app restarts.
"""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ParaknowError
from ..core.fsio import atomic_write_json
from ..core.jobdir import LOG_FILE, STOP_FILE, read_json, read_log, request_stop
from ..core.jobdir import read_status as read_job_status
from ..core.processes import proc_start_time, spawn
from ..runs.executors import ExecutorConfig
from .cells import RECIPE_FILE, STUDY_FILE
from .recipe import Recipe, parse_recipe
from .report import collect
from .runner import DEFAULT_WORKERS, check_devices, prepare


@dataclass
class StudyView:
    """A study as the app shows it: its recipe, process state and results so far."""
    out: Path
    recipe: Recipe
    status: dict
    results: dict

    @property
    def state(self) -> str:
        return self.status.get("state", "missing")

    @property
    def live(self) -> bool:
        return self.state == "running"


def start_study(recipe: Recipe, out, resume: bool = False, workers=DEFAULT_WORKERS,
                executor: ExecutorConfig | None = None) -> subprocess.Popen:
    """Check, then start the study as a background process running `workers` cells at a time on
    `executor` (default: this machine; an executor that cannot take work now, such as a Ray
    address nothing answers on, is refused before anything is written); returns the process."""
    out = Path(out).expanduser().absolute()
    status = read_status(out)
    if status.get("state") == "running":
        raise ParaknowError(f"the study in {out} is already running (pid {status.get('pid')}).")
    executor = check_devices(recipe, (executor or ExecutorConfig()).check_reachable())
    _, estimate = prepare(recipe, out, resume=resume, workers=workers)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RECIPE_FILE, recipe.to_dict())
    (out / STOP_FILE).unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "paraknow", "study", "--recipe", str(out / RECIPE_FILE), "--out", str(out), "--resume",
           "--workers", str(workers), *executor.to_argv()]
    proc = spawn(cmd, out, out / LOG_FILE)  # reaped by the liveness check
    previous = read_json(out / STUDY_FILE) or {}
    atomic_write_json(out / STUDY_FILE, {**previous, "state": "running", "phase": "starting", "pid": proc.pid,
                                         "pid_start": proc_start_time(proc.pid),
                                         "launched": time.time(), "estimate_s": round(estimate.total_s, 1),
                                         "threads": estimate.policy.to_dict(),
                                         "executor": executor.to_dict(), "error": None})
    return proc


def read_status(out) -> dict:
    """DIR/study.json with the job substrate's liveness check (paraknow.core.jobdir): a `running`
    study whose process is gone (a crash, a reboot, a bad recipe; see stdout.log) is settled once as
    `failed`, or `stopped` when it was asked to stop."""
    return read_job_status(out, status_file=STUDY_FILE)


def read_study(out) -> StudyView:
    """The study in `out` as it stands now (partial results while it runs)."""
    out = Path(out).expanduser().absolute()
    stored = read_json(out / RECIPE_FILE)
    if stored is None:
        raise ParaknowError(f"{out} holds no study (no {RECIPE_FILE}).")
    recipe = parse_recipe(stored)
    return StudyView(out, recipe, read_status(out), collect(recipe, out))


def stop_study(out) -> None:
    """Ask the study to stop: no new cell starts, the running cell's training stops at its next
    step (that cell is recorded `stopped`); resume it later with `start_study(..., resume=True)`."""
    request_stop(out)


def log_tail(out, max_bytes: int = 4000) -> str:
    """The end of DIR/stdout.log (the study process's progress lines and errors)."""
    return read_log(out, max_bytes)
