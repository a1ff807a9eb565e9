"""How long the README's set-up and a first evaluation take on this machine: the install into a fresh virtual
environment (the README's first command without `streamlit run`) and `paraknow eval` of the demo student on
task:arith:test (all 1,000 items, and `--limit 200`), each timed as a whole command beside the load average.
(The test lanes' times are docs/testing.md's.)

    python bench/bench_setup_times.py --out docs/results/setup_times.json
    python bench/bench_setup_times.py --smoke          # eval --limit 2 only, seconds
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_figures

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], cwd: Path) -> dict:
    from paraknow.core.threads import load_average

    load, t0 = load_average(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    seconds = time.perf_counter() - t0
    print(f"{seconds:7.1f} s  {' '.join(cmd)}  (load {load} -> {load_average()})", flush=True)
    return {"command": " ".join(cmd), "seconds": round(seconds, 1), "load_average_start": load,
            "load_average_end": load_average()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="eval --limit 2 only (the test suite runs this)")
    ap.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    print(f"{os.cpu_count()} cpus; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}", flush=True)
    figures = {}
    evaluate = [sys.executable, "-m", "paraknow", "eval", "--model", "demo:student", "--data", "task:arith:test"]
    with tempfile.TemporaryDirectory(prefix="setup-times-") as scratch:
        if not args.smoke:
            venv = Path(scratch) / "venv"
            figures["install"] = [timed([sys.executable, "-m", "venv", str(venv)], ROOT),
                                  timed([str(venv / "bin" / "pip"), "install", "-q", "-r", "requirements.txt", "-e", "."],
                                        ROOT)]
            figures["install_s"] = round(sum(step["seconds"] for step in figures["install"]), 1)
        limits = [2] if args.smoke else [200, None]
        figures["eval"] = [{"limit": n, **timed(evaluate + (["--limit", str(n)] if n else []), ROOT)} for n in limits]
    if args.out:
        write_figures(args.out, figures)


if __name__ == "__main__":
    main()
