"""Helpers shared by the bench scripts (run as `python bench/NAME.py`, so this folder is on sys.path)."""
from __future__ import annotations

import statistics
import time


def timeit(fn, repeats):
    """(median seconds, last result) over `repeats` calls."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out
