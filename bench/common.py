"""Helpers shared by the bench scripts (run as `python bench/NAME.py`: Python imports this folder's modules)."""
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


def scale_parser(smoke_help: str):
    """The options the scale benches share: --smoke, --threads, --out."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help=smoke_help)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", default=None, help="also write the figures to this JSON file")
    return ap


def parse_scale_args(ap):
    """Parse, and set the torch thread count when --threads is given."""
    import torch

    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def write_figures(path, figures: dict) -> None:
    """The bench's figures as JSON at `path`, with their provenance (date, machine, git commit and
    this command; see paraknow.report). Figures quoted in the README go to docs/results/."""
    import shlex
    import sys

    from paraknow.report import write_report

    write_report(path, figures, "python " + " ".join(shlex.quote(a) for a in sys.argv))
