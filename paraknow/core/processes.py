"""Background processes of the app (training runs, the run queue, studies): start them so they outlive
the caller, and tell whether one is still alive.

  spawn(cmd, cwd, log_path) -> Popen   own session, stdin /dev/null, stdout + stderr appended to
                                       log_path (after a `$ cmd` line), same cache as this process
  pid_alive(pid, start)     -> bool    alive, not a zombie, and not a reused pid
  reap_children()                      collect every ended child (also done by pid_alive)
  proc_start_time(pid)      -> int     kernel start time, recorded beside a pid to detect reuse
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .errors import ParaknowError
from .paths import PACKAGE_DIR, cache_root

children: dict[int, subprocess.Popen] = {}  # processes this process started, reaped on liveness checks


def child_env() -> dict:
    """The environment of a background process: the same cache. The child imports the installed
    paraknow (`pip install -e .`), whatever folder it runs in."""
    _check_installed()
    env = dict(os.environ)
    env["PARAKNOW_CACHE"] = str(cache_root())  # the child must see the same cache
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _check_installed() -> None:
    from importlib import metadata

    try:
        metadata.distribution("paraknow")
    except metadata.PackageNotFoundError:
        raise ParaknowError("background runs need paraknow installed: run `pip install -e .` in the "
                            f"project folder ({PACKAGE_DIR.parent}).") from None


def spawn(cmd: list[str], cwd, log_path, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    """Start `cmd` in a new session (it outlives the caller) with the environment of `child_env`,
    output appended to `log_path`; the process is remembered so `pid_alive` reaps it."""
    env = child_env()
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, pass_fds=pass_fds)
    children[proc.pid] = proc
    return proc


def proc_start_time(pid: int | None) -> int | None:
    """Kernel start time of a process (clock ticks since boot), to tell a reused pid apart."""
    if not pid:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def reap_children() -> None:
    """Collect the exit status of every process this one started that has ended (queue workers,
    runs, studies, page jobs), so none lingers as a zombie under the server."""
    for child_pid, child in list(children.items()):
        if child.poll() is not None:
            children.pop(child_pid, None)


def pid_alive(pid: int | None, start: int | None = None) -> bool:
    """Whether process `pid` runs (and is the one that started at `start`, when given)."""
    if not pid:
        return False
    reap_children()  # (a child of ours that ended is reaped here, so the checks below see it gone)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2:].split()[0] in ("Z", "X"):
            return False
    except (OSError, ValueError, IndexError):
        pass
    now_start = proc_start_time(pid)
    return start is None or now_start is None or now_start == start  # else: the pid was reused
