"""Where a result came from: date, machine, threads, load, commit and command (every results file records it)."""
from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import subprocess

from .paths import PACKAGE_DIR

RESULTS_DIR = PACKAGE_DIR.parent / "docs" / "results"


def git_commit() -> dict:
    """{"commit", "dirty"} of the checkout the package runs from (None outside a git checkout).
    `dirty`: tracked files other than the results under RESULTS_DIR differ from the commit (a
    changed result does not make the code dirty)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=PACKAGE_DIR.parent, capture_output=True, text=True,
                              timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        results = RESULTS_DIR.relative_to(PACKAGE_DIR.parent).as_posix()
        status = git("status", "--porcelain", "--untracked-files=no", "--", ".", f":(exclude){results}")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


@functools.cache
def code_version() -> str | None:
    """The commit this process's code was loaded from, `-dirty` appended when tracked files differed
    (None outside a git checkout): read once per process, since the code it runs is the code it
    imported. A study cell records it (each cell's own, `cell.json`'s `commit`)."""
    found = git_commit()
    return None if found["commit"] is None else found["commit"] + ("-dirty" if found["dirty"] else "")


def provenance(command: str) -> dict:
    """Date, machine, commit and command of a report being written now."""
    import torch

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "python": platform.python_version(), "torch": torch.__version__,
                    # other work sharing the machine when the figures were written (1, 5, 15 min)
                    "load_average": [round(x, 2) for x in os.getloadavg()]},
        **git_commit(),
        "command": command,
    }
