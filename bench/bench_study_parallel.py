"""Cells one at a time vs two at a time: `run_study(workers=1)` vs `run_study(workers=2)`.

The same study (demo pair, JSONL subsets of task:instruct, vanilla LoRA and PKT over a two-rate
sweep) runs both ways from a fresh sensitivity cache: one at a time in this process, or two
worker processes, each cell with the thread policy's one torch thread (paraknow/core/threads.py).
The figure recorded before that policy (one at a time with every core as threads: 2.65x slower
than two workers of one thread on this 2-core CPU) is why `--workers auto` runs as many one-thread
workers as there are free cores.

    python bench/bench_study_parallel.py --out docs/results/study_parallel.json
    python bench/bench_study_parallel.py --smoke          # seconds; what the test suite runs

Rounds: one at a time, two at a time, one at a time; the faster one-at-a-time round is compared.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import time
from pathlib import Path

from common import run_sides, study_bench, study_inputs

SIZES = {"full": {"train": 256, "val": 32, "test": 200, "seed": 32, "seeds": [0, 1, 2], "tokens": 32},
         "smoke": {"train": 8, "val": 2, "test": 2, "seed": 4, "seeds": [0], "tokens": 4}}


def make_recipe(root: Path, size: dict) -> dict:
    paths = study_inputs(root, "instruct", size)
    sweep = [3e-3, 1e-2]
    return {"teacher": "demo:teacher", "student": "demo:student", **paths,
            "train": {"epochs": 1, "batch": 8, "micro_batch": 8, "eval_max_new_tokens": size["tokens"],
                      "device": "cpu"},
            "seeds": size["seeds"], "budget_minutes": 600,
            "arms": [{"name": "vanilla", "init": "vanilla", "lr_sweep": sweep},
                     {"name": "pkt", "init": "pkt", "lr_sweep": sweep, "extract": {"samples": size["seed"]}}]}


def timed_study(recipe, out: Path, workers: int, calibration) -> float:
    from paraknow.study import run_study

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the training logs
        run_study(recipe, out, workers=workers, calibration=calibration)
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    from paraknow.study.budget import calibrate
    from paraknow.study.plan import check_recipe

    with study_bench(__doc__, SIZES, make_recipe, "bench-study-parallel-", argv) as bench:
        recipe, root = bench.recipe, bench.root
        calibration = calibrate(recipe, check_recipe(recipe))  # measured once, outside both sides
        rounds = run_sides([(name, lambda name=name, workers=workers: timed_study(recipe, root / name, workers,
                                                                                   calibration))
                            for name, workers in (("one_1", 1), ("two", 2), ("one_2", 1))], root)
        cells = len(json.loads((root / "two" / "results.json").read_text())["cells"])
    one_s = min(rounds["one_1"], rounds["one_2"])
    figures = {"size": bench.size_name, "cells": cells, "cpu_count": os.cpu_count(),
               "one_at_a_time_s": round(one_s, 2), "two_at_a_time_s": round(rounds["two"], 2),
               "speedup_two_over_one": round(one_s / rounds["two"], 3)}
    return bench.report(figures)


if __name__ == "__main__":
    main()
