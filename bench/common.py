"""Helpers shared by the bench scripts (run as `python bench/NAME.py`: Python imports this folder's modules)."""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass


def timeit(fn, repeats):
    """(median seconds, last result) over `repeats` calls."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


ALL_CORES = 0  # --threads 0: one torch thread per core


def add_threads_option(parser, default: int = ALL_CORES):
    """--threads: the torch threads the bench times with (every bench sets it and prints it)."""
    parser.add_argument("--threads", type=int, default=default,
                        help=f"torch threads ({ALL_CORES}: one per core; default {default})")
    return parser


def set_threads(threads: int) -> int:
    """Set torch's intra-op threads (ALL_CORES: one per core) and print the count beside the load
    average (timings on a shared machine mean little without both). Returns the count."""
    import os

    import torch

    from paraknow.core.threads import load_average

    torch.set_num_threads(threads or os.cpu_count() or 1)
    print(f"torch threads: {torch.get_num_threads()} of {os.cpu_count()} cpus; load average {load_average()}",
          flush=True)
    return torch.get_num_threads()


def scale_parser(smoke_help: str):
    """The options the scale benches share: --smoke, --threads, --out."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help=smoke_help)
    add_threads_option(ap)
    ap.add_argument("--out", default=None, help="also write the figures to this JSON file")
    return ap


def parse_scale_args(ap):
    """Parse, and set (and print) the torch thread count."""
    args = ap.parse_args()
    set_threads(args.threads)
    return args


def write_figures(path, figures: dict) -> None:
    """The bench's figures as JSON at `path`, with their provenance (date, machine, git commit and
    this command; see paraknow.report). Figures quoted in the README go to docs/results/."""
    import shlex
    import sys

    from paraknow.report import write_report

    write_report(path, figures, "python " + " ".join(shlex.quote(a) for a in sys.argv))


def study_inputs(root, task: str, size: dict) -> dict:
    """JSONL subsets of a built-in task's splits under `root` for a bench study: the first
    `size[split]` records of seed, train, val and test. Returns the recipe's data keys."""
    from pathlib import Path

    from paraknow.core.data import load_records
    from paraknow.core.records import to_jsonl

    paths = {}
    for key, split in (("seed_data", "seed"), ("train_data", "train"), ("val_data", "val"), ("test_data", "test")):
        path = Path(root) / f"{key}.jsonl"
        path.write_text(to_jsonl(load_records(f"task:{task}:{split}")[:size[split]]))
        paths[key] = str(path)
    return paths


def run_sides(sides, cache_root):
    """{name: seconds} of `sides` ([(name, fn)], each fn() -> seconds) run in turn, each with its
    own empty PARAKNOW_CACHE under `cache_root` (so every side computes its own sensitivity); the
    caller's PARAKNOW_CACHE is restored afterwards."""
    import os
    from pathlib import Path

    saved, rounds = os.environ.get("PARAKNOW_CACHE"), {}
    try:
        for name, fn in sides:
            os.environ["PARAKNOW_CACHE"] = str(Path(cache_root) / f"cache-{name}")
            rounds[name] = fn()
    finally:
        if saved is None:
            os.environ.pop("PARAKNOW_CACHE", None)
        else:
            os.environ["PARAKNOW_CACHE"] = saved
    return rounds


@dataclass
class StudyBench:
    """What a study bench works on: its options, its size, a temporary folder and the recipe in it."""
    args: object  # argparse.Namespace: smoke, out
    size_name: str  # "smoke" | "full"
    size: dict
    root: object  # pathlib.Path, removed when the bench ends
    recipe: object  # paraknow.study.Recipe

    def report(self, figures: dict) -> dict:
        """Print the figures as one JSON line and, with --out, write them there; returns them."""
        import json

        print(json.dumps(figures))
        if self.args.out:
            write_figures(self.args.out, figures)
        return figures


@contextlib.contextmanager
def study_bench(doc: str, sizes: dict, make_recipe, prefix: str, argv=None):
    """The prologue the study benches share: --smoke / --out parsed from `argv`, a temporary folder
    (removed afterwards) and the recipe `make_recipe(root, size)` parsed there. Yields a StudyBench."""
    import argparse
    import tempfile
    from pathlib import Path

    from paraknow.core.threads import THREADS_PER_WORKER
    from paraknow.study import parse_recipe

    set_threads(THREADS_PER_WORKER)  # what the study's thread policy gives each cell (paraknow/core/threads.py)
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for the test suite")
    parser.add_argument("--out", default=None, help="also write the figures (with provenance) as JSON here")
    args = parser.parse_args(argv)
    size_name = "smoke" if args.smoke else "full"
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp)
        yield StudyBench(args, size_name, sizes[size_name], root, parse_recipe(make_recipe(root, sizes[size_name])))


def in_scratch(prefix: str, run, a) -> None:
    """`run(a, work)` in a fresh temporary folder that is also the paraknow cache; removed afterwards."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    work = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.setdefault("PARAKNOW_CACHE", str(work / "cache"))
    try:
        run(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
