"""Long computations started from a page, each in its own process, keyed by content.

Fine-tuning runs (paraknow.runs.jobs) and studies (paraknow.study.control) already run this way; this
module does the same for the shorter work the pages start: a sensitivity map, the layer
similarity, an export and its verification (the kinds are registered in
paraknow/runs/background_work.py). A job lives in

    cache/jobs/<kind>-<key>/
        spec.json        what to compute (the kind's own keys)
        status.json      {"state", "pid", "pid_start", "started", "finished", "error", "result"}
        progress.jsonl   {"t", "done", "total", "message"} lines, the last one is the newest
        STOP             written by `cancel`: the job stops at its next progress report
        stdout.log       the process's output

`key` is the content key of the result (the same models, data and settings give the same key),
so a second `start` of the same content while the job runs attaches to it instead of starting
another, and a page that reloads finds the job, or its result, by recomputing the key. The
process runs in its own session: reruns, reloads and a restarted server do not stop it; only
`cancel` does. States: running -> finished | failed | stopped (the substrate's states, paraknow.core.jobdir).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.cache import mark_entry
from ..core.errors import ParaknowError
from ..core.fsio import atomic_write_json, atomic_write_text, output_lock, sha256_bytes
from ..core.jobdir import (LOG_FILE, PROGRESS_FILE, SPEC_FILE, STATUS_FILE, STOP_FILE, append_progress,
    last_progress, read_json, read_status, request_stop, stop_requested)
from ..core.paths import cache_dir
from ..core.processes import pid_alive, proc_start_time, reap_children, spawn

PROGRESS_EVERY_S = 0.25  # at most this often a progress line is written
START_WAIT_S = 30.0  # how long a second starter waits for the first one's lock


class Cancelled(Exception):
    """Raised inside a job's process when it was asked to stop (STOP file or SIGTERM)."""


@dataclass
class JobView:
    """One job as read from disk."""
    kind: str
    key: str
    dir: Path
    state: str  # missing | running | finished | failed | stopped (paraknow.core.jobdir)
    done: int = 0
    total: int = 0
    message: str = ""
    error: str | None = None
    result: dict = field(default_factory=dict)
    started: float | None = None
    finished: float | None = None

    @property
    def live(self) -> bool:
        return self.state == "running"

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else max(0.0, min(1.0, self.done / self.total))

    @property
    def seconds(self) -> float | None:
        return None if self.started is None or self.finished is None else self.finished - self.started


def content_key(payload: dict) -> str:
    """A short content key of a JSON-able payload (sorted keys, so dict order does not matter)."""
    return sha256_bytes(json.dumps(payload, sort_keys=True, default=str).encode())[:32]


def jobs_root() -> Path:
    return cache_dir("jobs")


def job_dir(kind: str, key: str) -> Path:
    return jobs_root() / f"{kind}-{key}"


# ---------------------------------------------------------------------------------------
# Starting, reading, cancelling (the app's side)


def start(kind: str, key: str, spec: dict, files: dict[str, str] | None = None) -> JobView:
    """Start the job `kind` for content `key`, or attach to the one running for that key.

    `files` ({name: text}) are written into the job folder before it starts (e.g. the seed
    records). A finished, failed or stopped job of the same key is started afresh: the caller
    looks in the content cache first. Returns the job as it stands after starting.
    """
    from .background_work import KINDS

    if kind not in KINDS:
        raise ParaknowError(f"unknown background job kind '{kind}'; use one of {', '.join(KINDS)}.")
    directory = job_dir(kind, key)
    with output_lock(directory, wait_s=START_WAIT_S):  # two starters of one key: the second attaches
        view = read(kind, key)
        if view.live:
            return view
        directory.mkdir(parents=True, exist_ok=True)
        mark_entry(directory)
        for name in (STOP_FILE, PROGRESS_FILE):
            (directory / name).unlink(missing_ok=True)
        for name, text in (files or {}).items():
            atomic_write_text(directory / name, text)
        atomic_write_json(directory / SPEC_FILE, {"kind": kind, "key": key, **spec})
        _launch(directory)
    return read(kind, key)


def _launch(directory: Path) -> None:
    atomic_write_json(directory / STATUS_FILE, {"state": "running", "pid": None, "started": time.time()})
    proc = spawn([sys.executable, "-m", "paraknow.runs.background", "run", str(directory)], directory,
                 directory / LOG_FILE)  # remembered, so a liveness check reaps it: no zombie under the server
    status = read_json(directory / STATUS_FILE) or {}
    if status.get("state") == "running" and status.get("pid") is None:  # the child may have written already
        atomic_write_json(directory / STATUS_FILE, {**status, "pid": proc.pid, "pid_start": proc_start_time(proc.pid)})





def read(kind: str, key: str) -> JobView:
    """The job of `kind` for `key` as it stands now (state `missing` when there is none)."""
    directory = job_dir(kind, key)
    reap_children()
    status = read_status(directory)
    progress = last_progress(directory) if status.get("state") == "running" else {}
    result = status.get("result")
    return JobView(kind=kind, key=key, dir=directory, state=str(status.get("state", "missing")),
                   done=int(progress.get("done") or 0), total=int(progress.get("total") or 0),
                   message=str(progress.get("message") or ""), error=status.get("error"),
                   result=result if isinstance(result, dict) else {}, started=status.get("started"),
                   finished=status.get("finished"))


def cancel(kind: str, key: str) -> JobView:
    """Ask a running job to stop: the STOP file (seen at its next progress report) and SIGTERM to
    its process group. A job that is not running is left as it is."""
    view = read(kind, key)
    if not view.live:
        return view
    request_stop(view.dir)
    status = read_json(view.dir / STATUS_FILE) or {}
    pid = status.get("pid")
    if pid and pid_alive(pid, status.get("pid_start")):
        try:
            os.killpg(pid, signal.SIGTERM)  # its own session: the pid is its process group
        except OSError:
            pass
    return read(kind, key)


def wait(kind: str, key: str, poll_s: float = 0.2) -> JobView:
    """Block until the job is no longer running (for the CLI-free tests and scripts)."""
    while (view := read(kind, key)).live:
        time.sleep(poll_s)
    return view


def live_jobs() -> list[JobView]:
    """Every running job (e.g. for a test that waits until all work started from a page is done)."""
    views = []
    if not jobs_root().is_dir():
        return views
    for directory in sorted(jobs_root().iterdir()):
        kind, sep, key = directory.name.partition("-")
        if sep and directory.is_dir() and (view := read(kind, key)).live:
            views.append(view)
    return views


# ---------------------------------------------------------------------------------------
# The job's own process


class _Reporter:
    """The progress callback (done, total, message) of a job: throttled JSONL lines, and the
    place where a STOP file is noticed."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._last = 0.0

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if stop_requested(self.directory):
            raise Cancelled()
        now = time.time()
        if done < total and now - self._last < PROGRESS_EVERY_S:
            return
        self._last = now
        append_progress(self.directory, done, total, message)


def _on_sigterm(signum, frame):
    raise Cancelled()


def run_job(directory) -> int:
    """Run the job prepared in `directory` in this process (`python -m paraknow.runs.background run DIR`)."""
    from .background_work import KINDS

    directory = Path(directory).absolute()
    spec = read_json(directory / SPEC_FILE) or {}
    status = {**(read_json(directory / STATUS_FILE) or {}), "state": "running", "pid": os.getpid(),
              "pid_start": proc_start_time(os.getpid())}
    status.setdefault("started", time.time())
    atomic_write_json(directory / STATUS_FILE, status)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if stop_requested(directory):
            raise Cancelled()
        result = KINDS[spec["kind"]](spec, directory, _Reporter(directory))
        status.update(state="finished", result=result, error=None)
    except Cancelled:
        status.update(state="stopped", error=None)
    except ParaknowError as exc:
        status.update(state="failed", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - recorded for the page, which shows one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        status.update(state="failed", error=f"{type(exc).__name__}: {first}")
        import traceback

        traceback.print_exc()
    status["finished"] = time.time()
    atomic_write_json(directory / STATUS_FILE, status)
    return 0 if status["state"] == "finished" else 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "run":
        return run_job(argv[1])
    print("usage: python -m paraknow.runs.background run JOB_DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
