"""The tests in one process vs two pytest-xdist workers: `pytest -n 0` vs `pytest -n 2 --dist loadgroup`.

The same selection of tests runs both ways, alternating (one, two, one, two...), each a fresh
`python -m pytest` in the checkout; wall and CPU seconds (the run and every process it started), the
load average before and after, and pytest's own summary line per round. The one-process side runs
torch with `--threads` threads (0: torch's default, one per core); each worker of the two-worker side
runs one (tests/conftest.py).

    python bench/bench_test_workers.py --out docs/results/test_workers.json   # the fast lane, 2 rounds each
    python bench/bench_test_workers.py --select tests/test_study.py --rounds 1
    python bench/bench_test_workers.py --smoke                                 # seconds; what the suite runs
"""
from __future__ import annotations

import argparse
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

from common import add_threads_option, write_figures

ROOT = Path(__file__).resolve().parent.parent
FAST_LANE = ["-m", "not slow and not browser"]
SMOKE = ["tests/test_waiting.py"]
SIDES = {"one": ["-n", "0"], "two": ["-n", "2", "--dist", "loadgroup"]}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_round(side: str, select: list[str], threads: int) -> dict:
    """One `python -m pytest -q` of the selection on `side`; its figures and pytest's last line."""
    from paraknow.core.threads import load_average

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # not a worker of an outer run
    if side == "one" and threads:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "pytest", "-q", *SIDES[side], *select]
    load_before, cpu0, t0 = load_average(), children_cpu(), time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    row = {"side": side, "command": shlex.join(command[1:]), "returncode": proc.returncode,
           "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "load_before": load_before,
           "load_after": load_average(), "pytest": summary}
    print(f"{side}: {row['wall_s']} s wall, {row['cpu_s']} s CPU, load {load_before} -> {row['load_after']}: "
          f"{summary}", flush=True)
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--select", nargs="+", default=None,
                    help="pytest arguments naming the tests (default: the fast lane, -m 'not slow and not browser')")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each side, alternating (default 2)")
    ap.add_argument("--smoke", action="store_true", help=f"{' '.join(SMOKE)}, one round each")
    add_threads_option(ap)
    ap.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    select = SMOKE if args.smoke else (args.select or FAST_LANE)
    rounds = 1 if args.smoke else args.rounds
    print(f"one process: torch threads {args.threads or 'default (one per core)'}; two workers: 1 each; "
          f"{os.cpu_count()} cpus", flush=True)
    rows = [one_round(side, select, args.threads) for _ in range(rounds) for side in SIDES]
    best = {side: min(r["wall_s"] for r in rows if r["side"] == side) for side in SIDES}
    figures = {"select": select, "threads_one_process": args.threads, "cpus": os.cpu_count(), "rounds": rows,
               "best_wall_s": best, "two_over_one": round(best["two"] / best["one"], 3),
               "all_passed": all(r["returncode"] == 0 for r in rows)}
    print(f"best wall: one process {best['one']} s, two workers {best['two']} s "
          f"({figures['two_over_one']}x); every round passed: {figures['all_passed']}", flush=True)
    if args.out:
        write_figures(args.out, figures)
    return figures


if __name__ == "__main__":
    sys.exit(0 if main()["all_passed"] else 1)
