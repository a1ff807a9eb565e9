"""The job substrate: one folder per piece of work that runs in a process of its own.

Fine-tuning runs (paraknow.runs.rundir), the pages' background jobs (paraknow.runs.background)
and study cells all keep the same files and the same state names:

  spec.json       what to do (the kind's own keys)
  status.json     {"state", "pid", "pid_start", "host", "started", "finished", "error", ...}
  progress.jsonl  {"t", "done", "total", "message"} lines; the last complete one is the newest
  STOP            asks the work to stop at its next step (written by `request_stop`)
  stdout.log      the process's output

States: queued -> running -> finished | failed | stopped. A reader never trusts the files: a
malformed status.json reads as `unreadable`, a missing one as `missing`, and a `running` job
whose process is gone is settled once (written back) as `stopped` when it was asked to stop,
else `failed` with the reason.
"""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from .fsio import atomic_write_json, atomic_write_text
from .processes import pid_alive
from .validate import type_problem

SPEC_FILE = "spec.json"
STATUS_FILE = "status.json"
PROGRESS_FILE = "progress.jsonl"
STOP_FILE = "STOP"
LOG_FILE = "stdout.log"
STATES = ("queued", "running", "finished", "failed", "stopped")
TERMINAL_STATES = ("finished", "failed", "stopped")
BUSY_STATES = ("queued", "running")
UNREADABLE = "unreadable"  # the state of a job whose status.json is malformed
MISSING = "missing"  # the state of a folder without status.json
NEVER_REPORTED_S = 120  # a job launched this long ago whose process never recorded its pid has failed


def read_json(path) -> dict | None:
    """A JSON object from a file, or None when missing, unreadable or not an object (files are
    written atomically, so a half-written one only means a foreign writer)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def read_object(path: Path, types_by_key: dict) -> tuple[dict | None, str | None]:
    """(the JSON object in `path`, None) or (None, why it is unreadable): missing, not JSON,
    not an object, or a field of the wrong type."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except (OSError, ValueError, RecursionError) as exc:
        return None, f"{path.name} is not valid JSON ({type(exc).__name__})"
    if not isinstance(data, dict):
        return None, f"{path.name} holds a JSON {type(data).__name__}, not an object"
    return (None, problem) if (problem := type_problem(data, types_by_key, path.name)) else (data, None)


def read_log(directory, max_bytes: int = 20000) -> str:
    """The tail of DIR/stdout.log."""
    path = Path(directory) / LOG_FILE
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - max_bytes))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def last_progress(directory) -> dict:
    """The newest complete line of DIR/progress.jsonl ({} when there is none)."""
    try:
        lines = (Path(directory) / PROGRESS_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line being written right now
        if isinstance(row, dict):
            return row
    return {}


def append_progress(directory, done: int, total: int, message: str = "") -> None:
    line = json.dumps({"t": time.time(), "done": int(done), "total": int(total), "message": str(message)})
    with open(Path(directory) / PROGRESS_FILE, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def stop_requested(directory) -> bool:
    return (Path(directory) / STOP_FILE).exists()


def request_stop(directory) -> None:
    atomic_write_text(Path(directory) / STOP_FILE, f"{time.time()}\n")


def settle_if_running(directory, state: str, reason: str | None, status_file: str = STATUS_FILE) -> dict:
    """Mark a job that still reads `running` as ended (`failed` with `reason`, or `stopped`); the
    status is read again first, since the process may have written its own final state just now."""
    path = Path(directory) / status_file
    status = read_json(path) or {}
    if status.get("state") == "running":
        status.update(state=state, phase="done", error=reason, finished=time.time())
        atomic_write_json(path, status)
    return status


def read_status(directory, types_by_key: dict | None = None, status_file: str = STATUS_FILE) -> dict:
    """DIR/status.json (or the kind's own `status_file`, e.g. a study's study.json) with a liveness
    check (see the module docstring); `types_by_key` are the fields whose type the caller relies on
    (a wrong type reads as `unreadable`)."""
    directory = Path(directory)
    path = directory / status_file
    if not path.exists():
        return {"state": MISSING, "error": f"{directory} has no {status_file}"}
    status, problem = read_object(path, {"state": str, **(types_by_key or {})})
    if status is None:
        return {"state": UNREADABLE, "error": problem}
    if status.get("state") not in STATES:
        return {"state": UNREADABLE, "error": f"{status_file}: unknown state {status.get('state')!r}"}
    if status.get("state") != "running" or status.get("host") not in (None, socket.gethostname()):
        return status  # settled, or written by a process on another machine: its pid means nothing here
    pid = status.get("pid")
    if pid is None:
        launched = status.get("launched") or status.get("started") or 0
        if time.time() - launched > NEVER_REPORTED_S:
            status = settle_if_running(directory, "failed", "the job was launched but its process never reported",
                                       status_file)
        return status
    if pid_alive(pid, status.get("pid_start")):
        return status
    if stop_requested(directory):
        return settle_if_running(directory, "stopped", None, status_file)
    return settle_if_running(directory, "failed", f"the process (pid {pid}) ended without finishing; "
                                                  f"see {directory / LOG_FILE}", status_file)


def is_busy(directory) -> bool:
    """Whether the job in `directory` is queued or running now (after the liveness check; `paraknow
    cache clear` keeps such a folder)."""
    return read_status(directory).get("state") in BUSY_STATES
