"""Study overhead: `paraknow.study.run_study` vs the same cells run one by one by hand.

Both sides run the same extract -> train -> evaluate calls on the demo pair (JSONL subsets of
task:arith), each with a fresh sensitivity cache. What the study adds -- recipe checks, the
time calibration, cheap signals, cell state and results written after every cell, the report --
is the difference. Target (issue 10): overhead <= 5 % of the study's wall time on a real study;
on the smoke size the fixed costs (calibration, report) dominate, so only the ratio printed at
full size means anything.

    python bench/bench_study.py                 # 2 arms x 2 seeds, 256 train records
    python bench/bench_study.py --smoke         # seconds; what the test suite runs

Rounds: by hand, study, by hand; the study is compared with the faster by-hand round.
"""
from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

from common import run_sides, study_bench, study_inputs

SIZES = {"full": {"train": 256, "val": 32, "test": 64, "seed": 32, "seeds": [0, 1], "tokens": 64},
         "smoke": {"train": 8, "val": 2, "test": 2, "seed": 4, "seeds": [0], "tokens": 4}}


def make_recipe(root: Path, size: dict) -> dict:
    paths = study_inputs(root, "arith", size)
    return {"teacher": "demo:teacher", "student": "demo:student", **paths,
            "train": {"epochs": 1, "batch": 8, "micro_batch": 8, "eval_max_new_tokens": size["tokens"],
                      "device": "cpu"},
            "seeds": size["seeds"], "budget_minutes": 600,
            "arms": [{"name": "vanilla", "init": "vanilla"},
                     {"name": "pkt", "init": "pkt", "extract": {"samples": size["seed"]}}]}


def by_hand(recipe, out: Path) -> float:
    """The cells' own work only: extract (PKT), train, evaluate on test."""
    from paraknow.core.data import load_records
    from paraknow.runs.evaluate import evaluate
    from paraknow.runs.train import train
    from paraknow.study.plan import plan_cells, train_config
    from paraknow.transfer.pipeline import extract_to_dir

    t0 = time.perf_counter()
    test = load_records(recipe.test_data)
    for cell in plan_cells(recipe):
        arm = recipe.arm(cell.arm)
        init = arm.init
        if arm.init == "pkt":
            init = str(out / f"export-{cell.cell_id}")
            extract_to_dir(recipe.teacher_of(arm), recipe.student, recipe.seed_data, init,
                           recipe.transfer_config(arm, cell.seed), recipe.sensitivity_config(arm), device="cpu")
        config = train_config(recipe, arm, cell.seed, cell.lr, init, out=str(out / f"run-{cell.cell_id}"))
        outcome = train(config)
        evaluate(outcome.model, outcome.tokenizer, test, max_new_tokens=config.eval_max_new_tokens,
                 batch_size=config.eval_batch, max_length=config.max_length)
    return time.perf_counter() - t0


def with_study(recipe, out: Path) -> float:
    from paraknow.study import run_study

    t0 = time.perf_counter()
    run_study(recipe, out)
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    with study_bench(__doc__, SIZES, make_recipe, "bench-study-", argv) as bench:
        def side(fn, name):
            def run():
                with contextlib.redirect_stdout(io.StringIO()):  # the training logs
                    return fn(bench.recipe, bench.root / name)
            return name, run

        rounds = run_sides([side(by_hand, "by_hand_1"), side(with_study, "study"), side(by_hand, "by_hand_2")],
                           bench.root)
    by_hand_s = min(rounds["by_hand_1"], rounds["by_hand_2"])
    result = {"size": bench.size_name, "cells": len(bench.size["seeds"]) * 2,
              "study_s": round(rounds["study"], 2), "by_hand_s": round(by_hand_s, 2),
              "overhead_share": round((rounds["study"] - by_hand_s) / rounds["study"], 4)}
    return bench.report(result)


if __name__ == "__main__":
    main()
