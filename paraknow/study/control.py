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
from ..core.fsio import atomic_write_json, atomic_write_text
from ..core.jobdir import LOG_FILE, STOP_FILE, read_json, read_log
from ..core.processes import pid_alive, spawn
from ..runs.executors import ExecutorConfig
from .cells import RECIPE_FILE, STUDY_FILE
from .recipe import Recipe, parse_recipe
from .report import collect
from .runner import DEFAULT_WORKERS, check_devices, prepare

LIVE_STATES = ("starting", "running")


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
        return self.state in LIVE_STATES


def start_study(recipe: Recipe, out, resume: bool = False, workers=DEFAULT_WORKERS,
                executor: ExecutorConfig | None = None) -> subprocess.Popen:
    """Check, then start the study as a background process running `workers` cells at a time on
    `executor` (default: this machine; an executor that cannot take work now, such as a Ray
    address nothing answers on, is refused before anything is written); returns the process."""
    out = Path(out).expanduser().absolute()
    status = read_json(out / STUDY_FILE) or {}
    if status and _alive(status):
        raise ParaknowError(f"the study in {out} is already running (pid {status.get('pid')}).")
    executor = check_devices(recipe, (executor or ExecutorConfig()).check_reachable())
    _, estimate = prepare(recipe, out, resume=resume, workers=workers)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RECIPE_FILE, recipe.to_dict())
    (out / STOP_FILE).unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "paraknow", "study", "--recipe", str(out / RECIPE_FILE), "--out", str(out), "--resume",
           "--workers", str(workers), *executor.to_argv()]
    proc = spawn(cmd, out, out / LOG_FILE)  # reaped by the liveness check
    atomic_write_json(out / STUDY_FILE, {**status, "state": "starting", "pid": proc.pid, "pid_start": None,
                                         "launched": time.time(), "estimate_s": round(estimate.total_s, 1),
                                         "threads": estimate.policy.to_dict(),
                                         "executor": executor.to_dict(), "error": None})
    return proc


def _alive(status: dict) -> bool:
    return status.get("state") in LIVE_STATES and pid_alive(status.get("pid"), status.get("pid_start"))


def read_status(out) -> dict:
    """DIR/study.json with a liveness check: a live state whose process is gone reads `interrupted`
    (after a crash, a reboot, or a bad recipe; see stdout.log)."""
    out = Path(out)
    status = read_json(out / STUDY_FILE) or {"state": "missing"}
    if status.get("state") in LIVE_STATES and not _alive(status):
        status = read_json(out / STUDY_FILE) or status  # it may have finished just now
        if status.get("state") in LIVE_STATES and not _alive(status):
            status = {**status, "state": "interrupted"}
    return status


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
    atomic_write_text(Path(out) / STOP_FILE, f"{time.time()}\n")


def log_tail(out, max_bytes: int = 4000) -> str:
    """The end of DIR/stdout.log (the study process's progress lines and errors)."""
    return read_log(out, max_bytes)
