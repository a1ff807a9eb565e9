"""The thread policy for work that runs many small torch jobs side by side (a study's cells).

On a CPU, torch's default (every core as a thread in every process) is the slowest choice once the
machine is shared: threads of one cell wait for each other while other work holds the cores. Issue
24 measured a PKT cell of the demo pair at 260-401 s with torch's default threads on a busy 2-core
machine against 34-56 s with one thread (CPU 222-248 s vs 22-24 s), and two cells at a time with one
thread each beat one cell with two threads by 2.65x (docs/results/study_parallel.json). So:

- one torch thread per worker (THREADS_PER_WORKER) on a CPU;
- `workers="auto"`: as many workers as free cores (cores minus the 1-minute load average, at least
  one), and one worker when the work runs on a GPU (the cells would share it).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field

from .errors import ParaknowError

AUTO = "auto"
THREADS_PER_WORKER = 1
MAX_WORKERS = 64
WORKER_CHOICES = (AUTO, *range(1, MAX_WORKERS + 1))  # what the study page offers


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded (empty where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def free_cores() -> int:
    """Cores not busy with other work now: cores minus the 1-minute load average, at least 1."""
    cores = os.cpu_count() or 1
    load = load_average()
    return max(1, min(cores, cores - round(load[0]))) if load else cores


def parse_workers(value) -> int | str:
    """`auto` or a whole number from 1 to MAX_WORKERS (as typed on the command line or stored). Raises
    ParaknowError."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or str(number) != str(value).strip() or \
            not 1 <= number <= MAX_WORKERS:
        raise ParaknowError(f"workers must be '{AUTO}' or a whole number from 1 to {MAX_WORKERS}; got {value!r}.")
    return number


def resolve_workers(workers, on_gpu: bool = False) -> int:
    """How many workers `workers` (`auto` or a number) means here and now."""
    workers = parse_workers(workers)
    if workers != AUTO:
        return workers
    return 1 if on_gpu else free_cores()


def threads_per_worker(workers: int, on_gpu: bool = False) -> int:
    """Torch threads each worker uses: THREADS_PER_WORKER on a CPU; on a GPU the cores shared out (the
    host side of GPU work is not what contends)."""
    return max(1, (os.cpu_count() or 1) // workers) if on_gpu else THREADS_PER_WORKER


@dataclass(frozen=True)
class ThreadPolicy:
    """What a study runs with: workers at a time, torch threads in each, and the load when decided."""
    workers: int
    threads: int
    requested: int | str = AUTO  # what was asked for (`auto` or a number)
    load_average: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def thread_policy(workers=AUTO, on_gpu: bool = False) -> ThreadPolicy:
    """The policy for `workers` (`auto` or a number) here and now. Raises ParaknowError."""
    resolved = resolve_workers(workers, on_gpu)
    return ThreadPolicy(resolved, threads_per_worker(resolved, on_gpu), parse_workers(workers), load_average())


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with `n` torch intra-op threads, restoring the previous count afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
