"""The run directory: the files a training run writes (`paraknow.runs.train`) and everything that reads
them (`paraknow.runs.jobs`, the Fine-tune page, studies). RUN_DIR holds:

  spec.json       the resolved TrainConfig (what was asked, with defaults filled in)
  status.json     state queued|running|finished|failed|stopped, pid, started/finished (unix
                  seconds), phase, step/max_steps, eta_s, error (when failed), final_eval,
                  throughput; rewritten atomically, at most about once a second while training
  metrics.jsonl   one JSON object per optimizer step: step, epoch, loss, lr, grad_norm, time
                  and, at eval steps, eval_loss, eval_accuracy (appended and flushed per line)
  adapter/        the trained adapter as a plain PEFT LoRA for the ORIGINAL student
  stdout.log      the output of a background run
  STOP            (created by the user) stops training at the next step; the adapter is saved

Readers never trust these files: a malformed status.json reads as state `unreadable` (that run
only), a half-written last metrics line is skipped, and a `running` run whose process is gone
reads (and is persisted) as `failed`.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..core.cache import MARKER_FILE
from ..core.errors import ParaknowError
from ..core.fsio import atomic_write_json, check_writable_parent, foreign_file, zip_folder
from ..core.jobdir import LOG_FILE, SPEC_FILE, STATUS_FILE, STOP_FILE, TERMINAL_STATES, read_json, request_stop
from ..core.jobdir import read_status as read_job_status
from ..core.paths import cache_dir

METRICS_FILE = "metrics.jsonl"
ADAPTER_DIR = "adapter"
PISSA_INIT_DIR = "pissa_init"  # temporary: PiSSA's initial adapter, removed when the run ends
TRAINER_DIR = ".trainer"  # temporary: Trainer's output_dir (nothing is saved there)
TRAINED_DIR = ".adapter_trained"  # temporary: a residual export's trained adapter before conversion
METRIC_KEYS = ("step", "epoch", "loss", "lr", "grad_norm")
EVAL_KEYS = ("eval_loss", "eval_accuracy")
STATUS_INTERVAL_S = 1.0  # status.json is rewritten at most this often while training (plus on changes)
_Number = int | float
# every path a run directory consists of (ADAPTER_DIR's files: paraknow.transfer.lora's names): `train
# --overwrite` replaces a finished, failed or stopped run holding these and nothing else
RUN_FILES = frozenset({SPEC_FILE, STATUS_FILE, METRICS_FILE, LOG_FILE, STOP_FILE, MARKER_FILE, ADAPTER_DIR,
                       f"{ADAPTER_DIR}/adapter_config.json", f"{ADAPTER_DIR}/adapter_model.safetensors"})
STATUS_TYPES = {  # status.json fields whose type the readers rely on
    "state": str, "phase": str | None, "pid": int | None, "pid_start": int | None, "host": str | None,
    "created": _Number | None, "started": _Number | None, "launched": _Number | None,
    "finished": _Number | None, "step": int | None, "max_steps": int | None, "epoch": _Number | None,
    "loss": _Number | None, "eta_s": _Number | None, "error": str | None, "final_eval": dict | None,
    "last_eval": dict | None, "method": str | None, "samples_per_s": _Number | None,
    "executor": dict | None,  # where the run executes (paraknow.runs.executors)
}


def runs_root() -> Path:
    return cache_dir("runs")


class StatusFile:
    """status.json of a run, always replaced atomically (a reader never sees half a file).

    Both go through fsio.atomic_write_json (a full disk never leaves half a file): `update(force=True)`
    (state changes) fsync'd; progress updates (`force=False`) throttled to one per STATUS_INTERVAL_S
    and without the fsync, so a slow disk never stalls a training step.
    """

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = Path(run_dir) / STATUS_FILE
        self.enabled = enabled
        self.data = (read_json(self.path) or {}) if enabled else {}
        self._last = 0.0

    def update(self, force: bool = True, **values) -> None:
        self.data.update(values)
        if not self.enabled:
            return
        now = time.monotonic()
        if force or now - self._last >= STATUS_INTERVAL_S:
            self._last = now
            atomic_write_json(self.path, self.data, fsync=force)


def is_prepared_for_us(status: dict) -> bool:
    """Whether a run directory with this status waits for this process to train in it (queued, or
    launched by paraknow.runs.jobs and not yet reported by anyone else)."""
    if status.get("state") == "queued":
        return True
    return status.get("state") == "running" and status.get("phase") == "starting" and \
        status.get("pid") in (None, os.getpid())


def check_out_dir(out: Path, overwrite: bool = False) -> None:
    """A run directory must be new, empty, or prepared by `paraknow.runs.jobs` for this process;
    with `overwrite`, also a run that has ended (finished, failed or stopped) holding only the files
    a run writes (RUN_FILES): anything else there is named and refused, never deleted."""
    if not out.exists():
        check_writable_parent(out)
        return
    if not out.is_dir():
        raise ParaknowError(f"--out {out} exists and is not a directory; choose a new run directory.")
    if not any(out.iterdir()):
        check_writable_parent(out)
        return
    status = read_json(out / STATUS_FILE)
    if status and is_prepared_for_us(status):
        return
    if status is None:
        raise ParaknowError(f"--out {out} is a non-empty directory that is not a paraknow run; paraknow "
                            "never writes into it: choose a new run directory.")
    settled = read_status(out)  # a `running` run whose process is gone (SIGKILL) is settled as failed here
    if overwrite and settled.get("state") in TERMINAL_STATES:
        if (foreign := foreign_file(out, RUN_FILES)) is not None:
            raise ParaknowError(f"--out {out} holds {foreign}, which paraknow did not write; paraknow never "
                                "deletes it: move it out, or choose a new run directory.")
        return
    if status.get("state") == "running" and settled.get("state") != "running":
        raise ParaknowError(f"--out {out} holds a run whose process (pid {status.get('pid')}) died without "
                            f"finishing; it is marked {settled.get('state')} now. To run it again there, add "
                            f"--overwrite (or remove it: rm -r {out}); or choose a new run directory.")
    again = " (--overwrite replaces it)" if settled.get("state") in TERMINAL_STATES else ""
    raise ParaknowError(f"--out {out} already holds a run (state {settled.get('state', 'unknown')}){again}; "
                        "choose a new run directory.")


def read_status(run_dir) -> dict:
    """status.json of a run with the substrate's liveness check (paraknow.core.jobdir.read_status)
    and the types of the fields the readers rely on."""
    return read_job_status(run_dir, STATUS_TYPES)


def read_spec(run_dir) -> dict:
    return read_json(Path(run_dir) / SPEC_FILE) or {}


def read_metrics(run_dir) -> list[dict]:
    """Every complete line of metrics.jsonl (a line being written right now is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def run_dirs() -> list[Path]:
    """Run directories under cache/runs/ in creation order (run ids sort by time)."""
    root = runs_root()
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and (p / SPEC_FILE).is_file()), key=lambda p: p.name)


def find_run(run_id: str) -> Path:
    run_dir = runs_root() / run_id
    if not (run_dir / SPEC_FILE).is_file():
        raise ParaknowError(f"no run '{run_id}' under {runs_root()}.")
    return run_dir


def has_finished_run() -> bool:
    """Whether any run under cache/runs/ has finished training (reads status files only: `finished`
    is terminal, so no liveness check is needed)."""
    return any((read_json(d / STATUS_FILE) or {}).get("state") == "finished" for d in reversed(run_dirs()))


def stop(run_dir) -> dict:
    """Ask a run to stop: a running one stops cleanly at its next step (and saves its adapter);
    a queued one is marked `stopped` without starting. Returns the (new) status."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    state = status.get("state")
    if state in TERMINAL_STATES or state == "missing":
        return status
    request_stop(run_dir)
    if state == "queued":
        status.update(state="stopped", phase="done", finished=time.time(), note="stopped before it started")
        atomic_write_json(run_dir / STATUS_FILE, status)
    return status


def adapter_zip(run_dir) -> bytes:
    """The run's adapter/ folder as zip bytes (files under `adapter/`)."""
    adapter = Path(run_dir) / ADAPTER_DIR
    if not (adapter / "adapter_config.json").is_file():
        raise ParaknowError(f"run {Path(run_dir).name} has no adapter yet: it is saved when training "
                            "finishes or is stopped.")
    return zip_folder(adapter)
