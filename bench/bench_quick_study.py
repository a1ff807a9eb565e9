"""The quick study's estimate against its real time: the same recipe run through the CLI several times in
a row (each into a fresh study folder, one cache shared by the runs and empty before the first -- run 0's
estimate is the cold one, each later run's uses the cells the runs before it measured;
paraknow/study/budget.py), the estimate printed before launch beside the real wall time of its cells and
of the whole command, with the threads and the load average.

    python bench/bench_quick_study.py --out docs/results/quick_study.json   # docs/examples/study-quick.json, twice
    python bench/bench_quick_study.py --smoke                               # a tiny recipe, seconds

The acceptance (issue 26): identical settings give estimates within ±20 % of each other and of the real time,
and the quick preset finishes within 10 minutes on this CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import study_inputs, write_figures

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's paraknow (and its commit in the provenance), as the CLI runs get
QUICK = ROOT / "docs" / "examples" / "study-quick.json"
SMOKE = {"seed": 4, "train": 16, "val": 4, "test": 4}


def _smoke_recipe(root: Path) -> Path:
    recipe = json.loads(QUICK.read_text())
    recipe.update(study_inputs(root, "arith", SMOKE), test_limit=None, val_limit=None,
                  train={"epochs": 1, "batch": 8, "micro_batch": 8, "eval_max_new_tokens": 4})
    recipe["arms"][1]["extract"] = {"samples": 4}
    path = root / "recipe.json"
    path.write_text(json.dumps(recipe))
    return path


def cpu_part(cache: Path, since: float) -> dict:
    """The estimate's CPU seconds (before the contention and overhead factors) against the cells' real CPU
    seconds, for the cells finished since `since` (the cache's timing records, paraknow/study/budget.py):
    how far the calibration is off, apart from the share of a core the cells got."""
    from paraknow.study.budget import TIMING_DIR

    rows = [row for path in (cache / TIMING_DIR).glob("*.json") for row in json.loads(path.read_text())["cells"]
            if row["at"] >= since]
    estimated, real = sum(r["estimate_cpu_s"] for r in rows), sum(r["cpu_s"] for r in rows)
    return {"estimate_cpu_s": round(estimated, 2), "cells_cpu_s": round(real, 2),
            "cpu_estimate_vs_cells": round(estimated / real - 1, 3) if real else None}


def run_once(recipe: Path, out: Path, nice: int, workers: str, cache: Path) -> dict:
    """One CLI run: the estimate it printed, the real time of its cells and of the command."""
    from paraknow.core.threads import load_average

    since = time.time()
    cmd = ["nice", "-n", str(nice), sys.executable, "-m", "paraknow", "study", "--recipe", str(recipe),
           "--out", str(out), "--workers", workers]
    load_start, t0 = load_average(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PARAKNOW_CACHE": str(cache)})
    command_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the study failed ({proc.returncode}): {proc.stderr[-2000:]}")
    results = json.loads((out / "results.json").read_text())
    timing = results["timing"]
    cells = [{"arm": c["arm"], "seconds": c["seconds"], "cpu_s": json.loads(
        (out / "cells" / Path(c["run_dir"] or f"{c['arm']}/run").parent.name / "cell.json").read_text()).get("cpu_s")}
        for c in results["cells"]]
    return {"estimate_s": timing["estimate_s"], "cells_wall_s": timing["wall_s"], "command_s": round(command_s, 1),
            "estimate_vs_cells": round(timing["estimate_s"] / timing["wall_s"] - 1, 3), **cpu_part(cache, since),
            "estimate_line": next(line for line in proc.stderr.splitlines() if line.startswith("study ")),
            "cells": cells, "workers": timing["workers"],
            "threads": timing["threads"], "nice": nice, "load_average_start": load_start,
            "load_average_end": load_average(), "budget_minutes": json.loads(recipe.read_text())["budget_minutes"],
            "within_budget": timing["budget_stop"] is None,
            "accuracy": {a["arm"]: a["mean"] for a in results["arms"]}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="a tiny recipe (seconds), for the test suite")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--workers", default="1")
    ap.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="quick-study-") as scratch:
        recipe = _smoke_recipe(Path(scratch)) if args.smoke else QUICK
        print(f"{os.cpu_count()} cpus; recipe {recipe.name}; {args.runs} runs, nice {args.nice}, "
              f"--workers {args.workers}", flush=True)
        runs = []
        for i in range(args.runs):
            runs.append(run_once(recipe, Path(scratch) / f"run{i}", args.nice, args.workers, Path(scratch) / "cache"))
            r = runs[-1]
            print(f"run {i}: estimate {r['estimate_s']:.0f} s, cells {r['cells_wall_s']:.0f} s "
                  f"({100 * r['estimate_vs_cells']:+.0f} %; CPU {r['estimate_cpu_s']:.1f} s estimated, "
                  f"{r['cells_cpu_s']:.1f} s real), command {r['command_s']:.0f} s; threads {r['threads']}, "
                  f"load {r['load_average_start']} -> {r['load_average_end']}", flush=True)
    estimates = [r["estimate_s"] for r in runs]
    spread = round(max(estimates) / min(estimates) - 1, 3)
    print(f"estimates {estimates}: the largest is {100 * spread:.0f} % over the smallest", flush=True)
    if args.out:
        write_figures(args.out, {"recipe": str(recipe.relative_to(ROOT)) if not args.smoke else "smoke",
                                 "runs": runs, "estimate_spread": spread,
                                 "all_within_10_min": all(r["command_s"] <= 600 for r in runs)})


if __name__ == "__main__":
    main()
