"""Where training runs and study cells execute: a small registry of executors (docs/cluster.md).

  local  (the default) what paraknow always did: a queued run is `python -m paraknow train --spec
         RUN_DIR/spec.json` started as a child process on this machine, and a study cell runs
         inside the study's own process.
  ray    the same command, or the same cell function, as a task on a Ray cluster (`--address`).
         Every node must see the run or study directory at the same path (a shared filesystem),
         so spec.json, status.json, metrics.jsonl, stdout.log, adapter/ and STOP work exactly as
         they do locally: the Fine-tune page polls the same files and STOP stops the run.

An executor has these verbs, and a new one is a class with them added to EXECUTORS (plus the
static checks `check(config)`, what validate() asks, and `check_reachable(config, timeout_s)`,
whether it can take work now):

  start(argv, cwd, log_path, started) -> Dispatch   run `python -m paraknow ARGV` in `cwd`, output
        appended to `log_path`, without waiting; `started(pid)` is called, on the machine where
        the process runs, with its pid as soon as it exists (paraknow.runs.jobs records it for the
        liveness check). Dispatch: `.pid` and `.wait() -> exit code`.
  call(fn, *args) -> fn(*args)                       run a function where the executor runs things
                                                      and wait for its value (raises ParaknowError
                                                      when the executor loses it)
  pool(workers, initializer, initargs)               a context manager with `submit(fn, *args) ->
                                                      concurrent.futures.Future`, `workers` at a time
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import socket
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol

from ..core.errors import ParaknowError, first_line
from ..core.options import default_of, option
from ..core.paths import PACKAGE_DIR, cache_root
from ..core.processes import spawn
from ..core.validate import check_number

RAY_INSTALL = "pip install -e .[ray]"  # pyproject's `ray` extra pins the version the tests use
REACH_TIMEOUT_S = 10.0  # how long a HOST:PORT may take to answer before it counts as unreachable
Started = Callable[[int], None]


class Dispatch(Protocol):
    """A started command: `pid` is a process on this machine that answers for it while it runs."""
    pid: int

    def wait(self) -> int: ...


def _executor_help() -> str:
    return " | ".join(f"{name} ({cls.summary})" for name, cls in EXECUTORS.items())


@dataclass
class ExecutorConfig:
    """Where a run or a study's cells execute (the --executor / --address / --cpus / --gpus flags)."""
    executor: str = option("local", _executor_help, choices=lambda: list(EXECUTORS))
    address: str | None = option(None, "Ray cluster to use: the head's HOST:PORT, auto, or ray://HOST:PORT "
                                       "(without it Ray uses RAY_ADDRESS, a cluster started on this machine, "
                                       "or a new single-machine instance); --executor ray only")
    cpus: float = option(1.0, "CPUs one Ray task (a run or a study cell) asks the cluster for", type=float)
    gpus: float = option(0.0, "GPUs one Ray task asks the cluster for (0: it runs on CPUs)", type=float)

    def validate(self) -> "ExecutorConfig":
        """Raise ParaknowError (one line, what to do) for an unknown executor, flags that do not
        apply, bad numbers, or Ray not installed; returns self."""
        if self.executor not in EXECUTORS:
            raise ParaknowError(f"unknown executor '{self.executor}': use one of {', '.join(EXECUTORS)}.")
        for name in ("cpus", "gpus"):
            check_number(f"--{name}", getattr(self, name), minimum=0)
        EXECUTORS[self.executor].check(self)
        return self

    def check_reachable(self, timeout_s: float = REACH_TIMEOUT_S) -> "ExecutorConfig":
        """validate(), and refuse (ParaknowError, what to do) an executor that cannot take work now,
        e.g. a Ray address that nothing answers on; nothing connects or starts here. For callers
        that queue work for another process to dispatch (the app, `jobs.submit`); returns self."""
        self.validate()
        EXECUTORS[self.executor].check_reachable(self, timeout_s)
        return self

    def to_argv(self) -> list[str]:
        """The `train` / `study` flags that give this executor (only the fields not at their default)."""
        argv = []
        for name, value in self.to_dict().items():
            if value != default_of(ExecutorConfig, name):
                argv += ["--" + name.replace("_", "-"), str(value)]
        return argv

    def check_device(self, device: str | None) -> None:
        """A Ray task that asks for no GPU sees none: refuse a CUDA device there before dispatching."""
        if self.executor == "ray" and not self.gpus and str(device or "").startswith("cuda"):
            raise ParaknowError(f"--device {device} on a Ray task needs a GPU from Ray: add --gpus 1 "
                                "(or train on --device cpu).")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "ExecutorConfig":
        """From status.json's `executor` (None or missing: the local executor)."""
        if data is None:
            return cls()
        if not isinstance(data, dict) or set(data) - set(cls.__dataclass_fields__):
            raise ParaknowError(f"the run's recorded executor {data!r} is not one paraknow knows; "
                                "queue the run again.")
        return cls(**data)


def make_executor(config: ExecutorConfig | None = None):
    """The executor that `config` names (validated; Ray connects here, once per process)."""
    config = (config or ExecutorConfig()).validate()
    return EXECUTORS[config.executor](config)


# ---------------------------------------------------------------------------------------
# Starting `python -m paraknow ...` on this machine (the local executor, and a Ray task on its node)


def paraknow_command(argv: list[str]) -> list[str]:
    """`python -m paraknow ARGV` with this interpreter."""
    return [sys.executable, "-m", "paraknow", *argv]


class LocalExecutor:
    """A child process of this one (runs), or this very process (study cells)."""
    summary = "a process on this machine"

    def __init__(self, config: ExecutorConfig):
        self.config = config

    @staticmethod
    def check(config: ExecutorConfig) -> None:
        if config.address is not None:
            raise ParaknowError("--address names a Ray cluster: add --executor ray, or drop --address.")

    @staticmethod
    def check_reachable(config: ExecutorConfig, timeout_s: float) -> None:
        """This machine is always there."""

    def start(self, argv: list[str], cwd, log_path, started: Started):
        proc = spawn(paraknow_command(argv), cwd, log_path)
        started(proc.pid)
        return proc

    def call(self, fn, *args):
        return fn(*args)

    def pool(self, workers: int, initializer=None, initargs: tuple = ()) -> ProcessPoolExecutor:
        """`workers` fresh processes (spawned: no state shared with this one), each set up by
        `initializer(*initargs)`."""
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=initializer, initargs=initargs)


# ---------------------------------------------------------------------------------------
# Ray


def import_ray():
    """The `ray` module, or ParaknowError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ParaknowError(f"--executor ray needs Ray, which is not installed: run `{RAY_INSTALL}` in the "
                            f"project folder ({PACKAGE_DIR.parent}).") from None
    return ray


def _run_on_node(argv: list[str], cwd: str, log_path: str, started: Started) -> tuple[int, str | None]:
    """(In a Ray task) start the command on this node exactly as the local executor does and wait
    for it: (exit code, None), or (2, why) when this node cannot see the run directory."""
    if not Path(cwd).is_dir():
        return 2, (f"{cwd} does not exist on Ray node {socket.gethostname()}: put the cache (PARAKNOW_CACHE) "
                   "or the study directory on a filesystem every node mounts at the same path.")
    import ray

    with open(log_path, "a", encoding="utf-8") as log:  # where it ran, above the command's `$` line
        log.write(f"# ray task {ray.get_runtime_context().get_task_id()} on node {socket.gethostname()}\n")
    proc = spawn(paraknow_command(argv), cwd, log_path)
    started(proc.pid)
    return proc.wait(), None


def _call_on_node(env: dict, fn, *args):
    """(In a Ray task) fn(*args) with `env` set (a Ray worker is reused: it is restored after)."""
    before = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        return fn(*args)
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class RayDispatch:
    """A command running as a Ray task. `pid` is this process: Ray ends a task whose owner (the
    process that submitted it) exits, so this process answers for the run until the task's
    command reports its own pid."""
    ref: object
    log_path: Path
    pid: int

    def wait(self) -> int:
        ray = import_ray()
        try:
            code, problem = ray.get(self.ref)
        except ray.exceptions.RayError as exc:
            code, problem = -1, f"the Ray task ended without an exit code: {first_line(exc)}"
        if problem:
            with open(self.log_path, "a", encoding="utf-8") as log:
                log.write(f"error: {problem}\n")
        return code


RAY_ADDRESS_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}$")  # HOST:PORT


def _check_reachable(address: str | None, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """A HOST:PORT (or ray://HOST:PORT) that nothing answers on is refused at once: Ray itself
    keeps retrying it for minutes."""
    host, _, port = (address or "").removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # auto, or Ray's own lookup (RAY_ADDRESS, a cluster on this machine)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ParaknowError(f"nothing answers at the Ray address {address} ({exc.strerror or exc}): start the "
                            "cluster (`ray start --head`) or correct --address (`ray status` on the head "
                            "shows it).") from None


class RayExecutor:
    """A task on a Ray cluster; the task runs on a node chosen by Ray for `cpus` and `gpus`."""
    summary = f"a task on a Ray cluster at the given address; needs `{RAY_INSTALL}`"

    def __init__(self, config: ExecutorConfig):
        self.config = config
        self.ray = import_ray()
        _check_reachable(config.address)
        if not self.ray.is_initialized():
            try:
                self.ray.init(address=config.address, log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise ParaknowError(f"cannot connect to the Ray cluster at {config.address or '(auto)'}: "
                                    f"{first_line(exc)}; check --address (`ray status` on the head shows it).") \
                    from None

    @staticmethod
    def check(config: ExecutorConfig) -> None:
        address = config.address
        if address is not None and address not in ("auto", "local") and \
                not RAY_ADDRESS_RE.match(address.removeprefix("ray://")):
            raise ParaknowError(f"--address {address!r} is not a Ray address: give HOST:PORT or ray://HOST:PORT "
                                "(`ray status` on the head shows it), auto, or drop --address.")
        import_ray()

    @staticmethod
    def check_reachable(config: ExecutorConfig, timeout_s: float) -> None:
        _check_reachable(config.address, timeout_s)

    def _submit(self, fn, *args):
        """fn(*args) as a Ray task with this process's cache; a task that asked for no GPU sees none
        (Ray leaves CUDA_VISIBLE_DEVICES alone then, and `--device auto` would take the node's GPUs)."""
        env = {"PARAKNOW_CACHE": str(cache_root())}
        if not self.config.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ""
        task = self.ray.remote(_call_on_node).options(num_cpus=self.config.cpus, num_gpus=self.config.gpus,
                                                      max_retries=0)
        return task.remote(env, fn, *args)

    def start(self, argv: list[str], cwd, log_path, started: Started) -> RayDispatch:
        started(os.getpid())  # until the task's command reports its pid (see RayDispatch)
        ref = self._submit(_run_on_node, list(argv), str(cwd), str(log_path), started)
        return RayDispatch(ref, Path(log_path), os.getpid())

    def call(self, fn, *args):
        return self.submit(fn, *args).result()

    def submit(self, fn, *args) -> Future:
        """fn(*args) as a Ray task; the Future raises ParaknowError when Ray loses the task."""
        result = Future()

        def settle(done: Future) -> None:
            try:
                result.set_result(done.result())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                result.set_exception(ParaknowError(f"the Ray task failed: {first_line(exc)}")
                                     if isinstance(exc, self.ray.exceptions.RayError) else exc)

        self._submit(fn, *args).future().add_done_callback(settle)
        return result

    @contextlib.contextmanager
    def pool(self, workers: int, initializer=None, initargs: tuple = ()):
        """Ray tasks; the caller keeps `workers` of them in flight, Ray places them by --cpus/--gpus
        (a task's threads follow its CPUs, so `initializer` is not needed there)."""
        yield self


EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor}

EXECUTOR_OPTIONS = ("executor", "address", "cpus", "gpus")  # `train` and `study` (paraknow.runs.executors)
