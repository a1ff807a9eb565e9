"""Background training runs for the app (LLaMA-Factory style): every run is a separate process.

Everything lives on disk under `cache/runs/<id>/` (the files `paraknow.runs.rundir` documents), so a
page reload or an app restart simply re-reads it:

  new_run(config)       -> run_dir       prepare a run: spec.json + status `queued`
  submit(config)        -> run_dir       new_run + make sure the queue worker runs
  launch(run_dir)       -> Popen         start `python -m paraknow train --spec RUN_DIR/spec.json`
                                         now (output to RUN_DIR/stdout.log, own session)
  ensure_worker()       -> pid | None    start the queue worker unless one holds the lock
  list_runs()           -> [RunInfo]     newest first, from disk only
  read_status(run_dir)  -> dict          with a liveness check (a dead `running` run becomes
                                         `failed`, persisted)
  read_metrics(run_dir) -> [dict]        metrics.jsonl, tolerating a half-written last line
  stop(run_dir)         -> dict          STOP file; a queued run is marked `stopped` at once
  adapter_zip(run_dir)  -> bytes         zip of RUN_DIR/adapter for a download button
  compare_runs(...)     -> (group, dirs) vanilla, PiSSA and PKT runs over N seeds, one group
  group_results(group)  -> dict          per method mean/std/min/max of final accuracy and loss

The queue: `python -m paraknow.runs.jobs worker` runs queued runs in creation order (ids sort by
time), one at a time, each as its own `train --spec` child, and exits when the queue is empty.
It holds an exclusive `flock` on `cache/runs/.worker.lock` (which records its pid), so at most
one worker runs and a crashed worker never leaves a stale lock. Workers and runs are started
in a new session with output to files, so they survive the app (the Streamlit server) being
restarted; after a reboot, runs that were `running` read as `failed` (their pid is gone) and
queued runs resume when the app next calls `list_runs()` or `ensure_worker()`.
"""
from __future__ import annotations

import fcntl
import functools
import math
import os
import secrets
import socket
import sys
import time
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..core.cache import mark_entry
from ..core.errors import ParaknowError
from ..core.fsio import atomic_directory, atomic_write_json, try_flock
from ..core.jobdir import (LOG_FILE, SPEC_FILE, STATUS_FILE, STOP_FILE, TERMINAL_STATES, UNREADABLE, read_json,
    read_object, settle_if_running)
from ..core.processes import proc_start_time, reap_children, spawn
from .executors import ExecutorConfig, make_executor
from .rundir import read_spec, read_status, run_dirs, runs_root, stop
from .train_config import METHODS, TrainConfig, method_of

LOCK_FILE = ".worker.lock"
WORKER_LOG = "worker.log"
CLAIM_FILE = ".launched"

# ---------------------------------------------------------------------------------------
# Creating and starting runs


def new_run_id() -> str:
    """Sortable by creation time (to the microsecond), plus a short random suffix."""
    now = time.time()
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"{int(now % 1 * 1e6):06d}-" + secrets.token_hex(3)


def new_run(config: TrainConfig, group: str | None = None, label: str | None = None,
            executor: ExecutorConfig | None = None, run_dir=None) -> Path:
    """Validate `config` (cheaply: no weights loaded) and create `cache/runs/<id>/` (or the new
    `run_dir`) with spec.json and status `queued`, atomically; status.json records the executor
    that will run it (local unless given). Raises ParaknowError on bad input (and creates nothing)."""
    config = TrainConfig(**config.to_dict())
    if group is not None:
        config.group = group
    if label is not None:
        config.label = label
    executor = (executor or ExecutorConfig()).validate()
    chosen = run_dir is not None  # a new or empty directory the caller names (checked like --out)
    run_dir = Path(run_dir).expanduser().absolute() if chosen else runs_root() / new_run_id()
    config.out = str(run_dir)
    resolved = config.resolved(check_out=chosen)
    executor.check_device(resolved.device)
    now = time.time()
    with atomic_directory(run_dir) as tmp:
        mark_entry(tmp, run_dir)
        atomic_write_json(Path(tmp) / SPEC_FILE, resolved.to_dict())
        atomic_write_json(Path(tmp) / STATUS_FILE, {"state": "queued", "created": now, "pid": None,
                                                    "method": resolved.method, "executor": executor.to_dict()})
    return run_dir


def submit(config: TrainConfig, group: str | None = None, label: str | None = None,
           executor: ExecutorConfig | None = None) -> Path:
    """Queue a run and make sure the worker is running; returns the run directory. An executor
    that cannot take work now (a Ray address nothing answers on) is refused before anything is written."""
    run_dir = new_run(config, group=group, label=label, executor=(executor or ExecutorConfig()).check_reachable())
    ensure_worker()
    return run_dir


def launch(run_dir, executor: ExecutorConfig | None = None):
    """Start a prepared (queued) run now as `python -m paraknow train --spec RUN_DIR/spec.json`
    with `executor` (default: the one its status.json records); returns the Dispatch (`.pid`,
    `.wait()`; a Popen for the local executor).

    The command gets its own session (it outlives the caller), stdin from /dev/null and stdout +
    stderr appended to RUN_DIR/stdout.log. A run is started at most once (RUN_DIR/.launched).
    """
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    if status.get("state") != "queued":
        raise ParaknowError(f"run {run_dir.name} is {status.get('state', 'missing')}, not queued; "
                            "only a queued run can be started.")
    try:
        executor = executor or ExecutorConfig.from_dict(status.get("executor"))
        runner = make_executor(executor)  # connects to a Ray cluster
    except ParaknowError as exc:  # it cannot start anywhere: failed, so the queue moves on
        status.update(state="failed", phase="done", error=str(exc), finished=time.time())
        atomic_write_json(run_dir / STATUS_FILE, status)
        raise
    try:
        os.close(os.open(run_dir / CLAIM_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        raise ParaknowError(f"run {run_dir.name} has already been started.") from None
    status.update(state="running", phase="starting", pid=None, launched=time.time(), executor=executor.to_dict())
    atomic_write_json(run_dir / STATUS_FILE, status)
    return runner.start(["train", "--spec", str(run_dir / SPEC_FILE)], run_dir, run_dir / LOG_FILE,
                        functools.partial(record_pid, run_dir))


def record_pid(run_dir, pid: int) -> None:
    """Record the process that answers for a starting run (the command takes seconds to import
    torch before it writes anything); called where that process runs, so `host` is its machine."""
    status = read_json(Path(run_dir) / STATUS_FILE) or {}
    if status.get("phase") == "starting" and status.get("state") == "running":
        status.update(pid=pid, pid_start=proc_start_time(pid), host=socket.gethostname())
        atomic_write_json(Path(run_dir) / STATUS_FILE, status)


def settle(run_dir, code: int) -> str:
    """After a run's command ended: a run still `running` (its command died, or a Ray task was
    lost on another machine, where no liveness check reaches) is marked failed. Returns the state."""
    state = read_status(run_dir).get("state")
    if state == "running":
        state = settle_if_running(run_dir, "failed", f"its process ended (exit code {code}) without "
                                                     f"finishing; see {LOG_FILE}").get("state")
    return state


# ---------------------------------------------------------------------------------------
# The queue worker


def _lock_path() -> Path:
    return runs_root() / LOCK_FILE


def worker_pid() -> int | None:
    """pid of the live queue worker, or None when no worker holds the lock."""
    path = _lock_path()
    with open(path, "a+") as fh:
        if try_flock(fh):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return None
        fh.seek(0)
        text = fh.read().strip()
    return int(text) if text.isdigit() else -1


def ensure_worker() -> int | None:
    """Start the queue worker if runs are queued and none is running; returns its pid (None if idle).

    The lock is taken here and handed to the worker (an inherited file descriptor), so a second
    call while the worker is still importing sees it held and starts nothing.
    """
    if _next_queued() is None:
        return worker_pid()
    fh = open(_lock_path(), "a+")
    try:
        if not try_flock(fh):
            fh.seek(0)
            text = fh.read().strip()
            return int(text) if text.isdigit() else -1
        root = runs_root()
        cmd = [sys.executable, "-m", "paraknow.runs.jobs", "worker", "--lock-fd", str(fh.fileno())]
        proc = spawn(cmd, root, root / WORKER_LOG, pass_fds=(fh.fileno(),))
        fh.seek(0)
        fh.truncate()
        fh.write(str(proc.pid))
        fh.flush()
        return proc.pid
    finally:
        fh.close()  # the worker's inherited descriptor keeps the lock


def _next_queued() -> Path | None:
    for run_dir in run_dirs():
        status = read_json(run_dir / STATUS_FILE) or {}
        if status.get("state") == "queued" and not (run_dir / CLAIM_FILE).exists():
            return run_dir
    return None


def _busy_run() -> Path | None:
    """A run that is running right now (started by anyone), after the liveness check."""
    for run_dir in run_dirs():
        status = read_json(run_dir / STATUS_FILE) or {}
        if status.get("state") == "running" and status.get("host") in (None, socket.gethostname()) \
                and read_status(run_dir).get("state") == "running":
            return run_dir
    return None


def _log(message: str) -> None:
    print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] worker {os.getpid()}: {message}", flush=True)


def worker_main(poll_s: float = 2.0, lock_fd: int | None = None) -> int:
    """Run queued runs one after another until none is left (`python -m paraknow.runs.jobs worker`).
    `lock_fd`: the lock file, already locked by `ensure_worker` and inherited."""
    fh = os.fdopen(lock_fd, "a+") if lock_fd is not None else open(_lock_path(), "a+")
    if not try_flock(fh):  # (re-locking an inherited, already locked descriptor succeeds)
        _log("another worker holds the lock; exiting")
        return 0
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    _log("started")
    while True:
        run_dir = _next_queued()
        if run_dir is None:
            # Release first, then look again: a run queued after our last look either sees the
            # lock free (and starts a worker) or is seen here.
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            if _next_queued() is None or not try_flock(fh):
                _log("queue empty; exiting")
                return 0
            continue
        busy = _busy_run()
        if busy is not None:  # e.g. a run started with launch() or left by a killed worker
            time.sleep(poll_s)
            continue
        if (run_dir / STOP_FILE).exists():
            stop(run_dir)
            continue
        try:
            proc = launch(run_dir)
        except ParaknowError as exc:  # stopped or started by someone else meanwhile
            _log(f"skipping {run_dir.name}: {exc}")
            continue
        _log(f"started run {run_dir.name} (pid {proc.pid})")
        code = proc.wait()
        _log(f"run {run_dir.name} ended with exit code {code}, state {settle(run_dir, code)}")


# ---------------------------------------------------------------------------------------
# Reading runs


@dataclass
class RunInfo:
    """One run as the runs table shows it."""
    run_id: str
    run_dir: Path
    state: str
    spec: dict
    status: dict
    method: str = ""
    group: str | None = None
    label: str | None = None
    created: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def final_eval(self) -> dict | None:
        return self.status.get("final_eval")

    def to_row(self) -> dict:
        """A flat dict for a table."""
        final = self.final_eval or {}
        return {"run": self.run_id, "state": self.state, "method": self.method, "label": self.label,
                "group": self.group, "init": self.spec.get("init"), "seed": self.spec.get("seed"),
                "step": self.status.get("step"), "max_steps": self.status.get("max_steps"),
                "loss": self.status.get("loss"), "eta_s": self.status.get("eta_s"),
                "accuracy": final.get("accuracy"), "eval_loss": final.get("loss"),
                "error": self.status.get("error")}


def _spec_problem(run_dir: Path) -> str | None:
    hints = typing.get_type_hints(TrainConfig)
    return read_object(run_dir / SPEC_FILE, {f.name: hints[f.name] for f in fields(TrainConfig)})[1]


def run_info(run_dir) -> RunInfo:
    """One run as read from disk; a malformed spec.json or status.json gives state `unreadable`
    (the reason in `status["error"]`) without affecting any other run."""
    run_dir = Path(run_dir)
    spec_problem = _spec_problem(run_dir)
    if spec_problem:
        spec, status = {}, {"state": UNREADABLE, "error": spec_problem}
    else:
        spec, status = read_spec(run_dir), read_status(run_dir)
    method = method_of(spec.get("init", "vanilla"))
    return RunInfo(run_id=run_dir.name, run_dir=run_dir, state=status.get("state", "missing"), spec=spec,
                   status=status, method=method, group=spec.get("group"), label=spec.get("label"),
                   created=status.get("created"))


def list_runs(group: str | None = None, resume_queue: bool = True) -> list[RunInfo]:
    """Every run under cache/runs/, newest first, read from disk (statuses liveness-checked).
    With `resume_queue`, queued runs left without a worker (e.g. after a reboot) are resumed."""
    reap_children()
    runs = [run_info(d) for d in run_dirs()]
    if group is not None:
        runs = [r for r in runs if r.group == group]
    if resume_queue and any(r.state == "queued" for r in runs):
        ensure_worker()
    return runs[::-1]


# ---------------------------------------------------------------------------------------
# Comparisons over seeds


def compare_runs(student: str, data: str, export_dir, seeds=(0, 1, 2), methods=METHODS,
                 start: bool = True, executor: ExecutorConfig | None = None, **settings) -> tuple[str, list[Path]]:
    """Queue `vanilla`, `pissa` and PKT (`export_dir`) runs for every seed, tagged with one group id.

    `settings` are further TrainConfig fields (epochs, lr, batch, eval_data, ...). Vanilla and PiSSA
    train the export's target modules (embedding LoRA included when the export has it) and, unless
    given, at its rank and alpha, so every arm trains the same modules and number of parameters; each
    spec.json records its target_modules. `executor`: where the runs execute (as for `submit`).
    Returns (group id, run directories in queue order).
    """
    from ..transfer.lora import ADAPTER_CONFIG, load_manifest

    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ParaknowError(f"unknown method(s) {', '.join(unknown)}; use {', '.join(METHODS)}.")
    if not seeds:
        raise ParaknowError("give at least one seed.")
    if "pkt" in methods or export_dir:
        if not export_dir:
            raise ParaknowError("the PKT runs need an export directory (from `python -m paraknow extract`).")
        manifest = load_manifest(export_dir)
        settings.setdefault("rank", manifest.get("rank"))
        settings.setdefault("alpha", manifest.get("alpha"))
        adapter_config = read_json(Path(export_dir) / ADAPTER_CONFIG) or {}
        if "target_modules" in settings:
            raise ParaknowError("a comparison trains the export's target modules in every arm; "
                                "drop target_modules (re-export with other --modules instead).")
        if isinstance(adapter_config.get("target_modules"), list):
            settings["target_modules"] = sorted(adapter_config["target_modules"])
    group = "g" + new_run_id()
    configs = []
    for seed in seeds:
        for method in methods:
            init = str(Path(export_dir).expanduser().absolute()) if method == "pkt" else method
            extra = dict(settings)
            if method == "pkt":
                extra.pop("rank", None), extra.pop("alpha", None), extra.pop("target_modules", None)
            configs.append(TrainConfig(student=student, data=data, init=init, seed=int(seed), group=group,
                                       label=f"{method} seed {seed}", **extra))
    for config in configs:  # validate all before queueing any
        config.resolved(check_out=False)
    executor = (executor or ExecutorConfig()).check_reachable()
    run_dirs = [new_run(config, executor=executor) for config in configs]
    if start:
        ensure_worker()
    return group, run_dirs


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"n": len(values), "mean": mean, "std": std, "min": min(values), "max": max(values)}


def group_results(group: str, runs: list[RunInfo] | None = None) -> dict:
    """Per method: final accuracy and loss statistics (sample std) over the group's finished runs,
    plus how many runs are in each state. {"group", "methods": {method: {...}}, "complete"}.
    `runs`: runs already read from disk (e.g. `list_runs()`), to save reading them again."""
    runs = list_runs(group=group, resume_queue=False) if runs is None else [r for r in runs if r.group == group]
    if not runs:
        raise ParaknowError(f"no runs in group '{group}'.")
    methods: dict[str, dict] = {}
    for run in sorted(runs, key=lambda r: r.run_id):
        entry = methods.setdefault(run.method, {"runs": [], "states": {}, "_acc": [], "_loss": []})
        entry["runs"].append(run.run_id)
        entry["states"][run.state] = entry["states"].get(run.state, 0) + 1
        final = run.final_eval or {}
        if run.state == "finished":
            if final.get("accuracy") is not None:
                entry["_acc"].append(float(final["accuracy"]))
            if final.get("loss") is not None:
                entry["_loss"].append(float(final["loss"]))
    for entry in methods.values():
        entry["accuracy"] = _stats(entry.pop("_acc"))
        entry["loss"] = _stats(entry.pop("_loss"))
    complete = all(r.state in TERMINAL_STATES for r in runs)
    return {"group": group, "methods": methods, "complete": complete}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"] and len(argv) in (1, 3) and (len(argv) == 1 or argv[1] == "--lock-fd"):
        return worker_main(lock_fd=int(argv[2]) if len(argv) == 3 else None)
    print("usage: python -m paraknow.runs.jobs worker [--lock-fd FD]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
