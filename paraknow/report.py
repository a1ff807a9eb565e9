"""Reports whose numbers go into the README, each written with its provenance.

    python -m paraknow.report demo [--out docs/results/demo_pair.json]
    python -m paraknow.report compare --task facts [--seeds 0 1 2] [--out docs/results/compare_facts.json]
    python -m paraknow.report study [--recipe docs/examples/study-demo.json] [--dir cache/studies/demo]
                                    [--out docs/results/study_demo] [--workers N]
    python -m paraknow.report reanalyse [--study docs/results/study_demo]

Every report is one JSON file holding the figures and `provenance`: the UTC date, the machine
(processor count, torch threads, GPU), the git commit of the checkout (and whether it had
uncommitted changes) and the exact command. The README names the command beside each table,
so every figure there can be reproduced and traced.

- `demo`: exact-match accuracy and loss of every built-in demo model (`demo:teacher`,
  `demo:teacher-small`, `demo:student`) on every built-in
  task's `test` split (all of it: 1000 items, 0.1-point resolution), with chance levels.
- `compare`: the Fine-tune page's Compare action on a built-in task: the default PKT export
  (`extract` defaults, seed split of the task) against vanilla LoRA and PiSSA at the same
  training settings, trained on the task's `train` split (which neither demo model saw in
  pre-training) and evaluated on all of its `test` split, one run per seed; per method the mean,
  sample standard deviation and a Student-t 95 % confidence interval over seeds.
- `study`: runs (or resumes: finished cells are kept) the shipped study recipe in `--dir`, then
  writes into `--out` summary.json (provenance, recipe, per-arm results and verdicts, the
  comparisons with their bootstrap intervals, signal correlations, timing, the cells per commit,
  each arm's mean cost), results.csv (every cell, its cost as columns),
  table.md (the per-arm table the README quotes) and the figures as PNG (bars per arm coloured by
  factor, the gain over the baseline vs the teacher's cost, the seed-count curve, the learning
  curves). The PNGs need kaleido and Chromium (requirements-images.txt); without them the JSON and
  CSV are still written and the reason is said.
- `reanalyse`: the declared comparisons of a written study (its summary.json's recipe, with the
  recipe's default families, and its results.csv; no cell is re-run) with the study's analysis
  (paraknow.study.compare: Holm within each family, adjusted intervals, equivalence margin,
  minimum detectable effects) into verdicts.json and verdicts.md beside them.
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

from .core.errors import ParaknowError
from .core.fsio import atomic_write_json
from .core.paths import PACKAGE_DIR
from .core.provenance import RESULTS_DIR, provenance


def write_report(path, figures: dict, command: str) -> Path:
    path = Path(path)
    atomic_write_json(path, {"provenance": provenance(command), **figures})
    return path


def mean_ci95(values: list[float]) -> dict:
    """n, mean, sample std and the Student-t 95 % interval of the mean (None for n < 2), with the
    interval from `paraknow.study.stats.mean_interval` (the Study's own)."""
    from .study.stats import mean_interval

    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None, "min": None, "max": None}
    estimate = mean_interval(values)
    std = math.sqrt(sum((v - estimate.mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": estimate.mean, "std": std, "ci95": estimate.interval,
            "min": min(values), "max": max(values)}


# ---------------------------------------------------------------------------------------
# demo


def chance_levels(name: str) -> dict:
    """Chance accuracy of a task's test split: uniform guessing, and always answering the most
    frequent answer (what a model that learned only the answer distribution would score)."""
    from collections import Counter

    from .core.tasks import task_records

    answers = [r["answer"] for r in task_records(name, "test")]
    top, count = Counter(answers).most_common(1)[0]
    uniform = 0.25 if name == "facts" else 0.0
    return {"uniform_guess": uniform, "majority_answer": top, "majority_share": count / len(answers)}


def demo_report(max_new_tokens: int = 64, n_test: int | None = None, progress=print) -> dict:
    from .core.models import DEMO_MODELS
    from .core.tasks import TASKS
    from .demo import DEMO_DIR, evaluate_dir

    out = {"max_new_tokens": max_new_tokens, "models": {}, "chance": {n: chance_levels(n) for n in TASKS}}
    for which in DEMO_MODELS:
        t0 = time.time()
        result = evaluate_dir(DEMO_DIR / which, n_test, max_new_tokens)
        out["models"][f"demo:{which}"] = {name: {k: v for k, v in row.items() if k != "correct"}
                                          for name, row in result.items()}
        progress(f"demo:{which}: " + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in result.items())
                 + f" ({time.time() - t0:.0f} s)")
    return out


# ---------------------------------------------------------------------------------------
# compare


def compare_report(task: str, seeds: list[int], workdir: Path, max_new_tokens: int = 64,
                   progress=print, **train_settings) -> dict:
    """Export with the defaults, then vanilla / PiSSA / PKT runs per seed, run one after another
    in this process (the same runs the Fine-tune page queues), evaluated on the test split."""
    from .core.tasks import TASKS
    from .runs.jobs import compare_runs, group_results
    from .runs.rundir import read_spec
    from .runs.train import run_training
    from .runs.train_config import load_spec, method_of
    from .transfer.pipeline import extract_to_dir
    from .transfer.plan import TransferConfig
    from .transfer.sensitivity import SensitivityConfig

    if task not in TASKS:
        raise ParaknowError(f"unknown task '{task}': use one of {', '.join(TASKS)}.")
    export_dir = Path(workdir) / f"export-{task}"
    t0 = time.time()
    manifest = extract_to_dir("demo:teacher", "demo:student", f"task:{task}:seed", export_dir,
                              TransferConfig(), SensitivityConfig())
    progress(f"exported {len(manifest['modules'])} modules ({time.time() - t0:.0f} s)")
    group, run_dirs = compare_runs("demo:student", f"task:{task}:train", export_dir, seeds=seeds, start=False,
                                   eval_data=f"task:{task}:test", eval_limit=None,
                                   eval_max_new_tokens=max_new_tokens, device="cpu", **train_settings)
    runs = []
    for run_dir in run_dirs:
        t1 = time.time()
        code = run_training(load_spec(run_dir / "spec.json"))
        spec = read_spec(run_dir)
        runs.append({"run": run_dir.name, "method": method_of(spec["init"]),
                     "seed": spec["seed"], "exit_code": code, "seconds": round(time.time() - t1, 1)})
        progress(f"{runs[-1]['method']} seed {spec['seed']}: exit {code} ({runs[-1]['seconds']} s)")
    results = group_results(group)
    methods = {}
    for method, entry in results["methods"].items():
        accuracies = [r["final_eval"]["accuracy"] for r in _finals(run_dirs, method)]
        losses = [r["final_eval"]["loss"] for r in _finals(run_dirs, method)]
        methods[method] = {"accuracy": mean_ci95(accuracies), "loss": mean_ci95(losses),
                           "states": entry["states"], "per_seed_accuracy": accuracies}
    spec = read_spec(run_dirs[0])
    settings = {k: spec[k] for k in ("epochs", "lr", "batch", "micro_batch", "rank", "alpha", "dropout",
                                     "warmup", "target_modules") if k in spec}
    return {"task": task, "train_data": f"task:{task}:train", "eval_data": f"task:{task}:test",
            "seeds": list(seeds), "export": {"modules": len(manifest["modules"]), "layer_map": manifest["layer_map"],
                                             "roles": manifest["roles"], "structure": manifest["structure"],
                                             "mode": manifest["mode"], "rank": manifest["rank"]},
            "train_settings": settings, "methods": methods, "runs": runs,
            "wall_seconds": round(time.time() - t0, 1)}


def study_report(recipe_path, study_dir: Path, out_dir: Path, workers, progress=print) -> dict:
    """Run or resume the study, then write its summary, cells and figures into `out_dir`."""
    from .core.fsio import atomic_write_bytes, atomic_write_text
    from .htmlreport import figure_image, image_export_unavailable
    from .study import load_recipe, run_study
    from .study.cells import read_cell
    from .study.plan import plan_cells
    from .study.report import (arm_curves, bars_figure, cells_csv, cost_figure, cost_points, curves_figure,
        markdown_table, seed_count_figure, seed_count_points)

    recipe = load_recipe(recipe_path)
    results = run_study(recipe, study_dir, resume=(Path(study_dir) / "recipe.json").is_file(), workers=workers,
                        progress=progress)
    cells = results["cells"]
    records = [read_cell(study_dir, c) for c in plan_cells(recipe)]  # with the start times
    spans = [(r["started"], r["started"] + r["seconds"]) for r in records if r.get("started") and r.get("seconds")]
    timing = {"cells": len(cells), "finished": sum(c["state"] == "finished" for c in cells),
              "cell_seconds_total": round(sum(c["seconds"] or 0 for c in cells), 1),
              "elapsed_s": round(max(e for _, e in spans) - min(s for s, _ in spans), 1) if spans else None,
              "workers": (results.get("timing") or {}).get("workers", workers)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "results.csv", cells_csv(results))
    atomic_write_text(out_dir / "table.md", markdown_table(results))
    figures = {"bars.png": bars_figure(results).update_layout(width=1500, height=560)}
    points = seed_count_points(recipe, results)
    if points:
        figures["seed_count.png"] = seed_count_figure(points, results).update_layout(width=900)
    spent = cost_points(results)
    if spent:
        figures["cost.png"] = cost_figure(spent, results).update_layout(width=1100)
    curves = arm_curves(study_dir, results)
    if curves:
        figures["curves.png"] = curves_figure(curves, results).update_layout(width=1500)
    why_not = image_export_unavailable()
    for name, figure in figures.items():
        if why_not is None:
            atomic_write_bytes(out_dir / name, figure_image(figure, "png"))
    return {"recipe": recipe.to_dict(), "baseline": results["baseline"], "arms": results["arms"],
            # the declared comparisons with the bootstrap over the cells' predictions, which stay in
            # the study directory (reanalyse, from results.csv alone, cannot recompute the bootstrap)
            "comparisons": results["comparisons"],
            "signal_correlations": results["signal_correlations"], "timing": timing,
            # the code that ran the cells (each cell's own commit) -> how many cells it ran
            "cell_commits": dict(Counter(c.get("commit") or "unrecorded" for c in cells)),
            "figures": sorted(figures) if why_not is None else [], "figures_unavailable": why_not}


def written_recipe(summary: Path):
    """The Recipe in a written study's summary.json; one written before `lr_selection` existed chose
    its learning rates per seed, and is re-analysed so."""
    import json

    from .study import parse_recipe

    written = json.loads(summary.read_text(encoding="utf-8"))["recipe"]
    written.setdefault("lr_selection", "per-seed")
    return parse_recipe(written)


def reanalyse_report(folder: Path) -> dict:
    """The comparisons of the study written into `folder` (summary.json + results.csv); writes
    verdicts.md there and returns verdicts.json's figures."""
    from .core.fsio import atomic_write_text
    from .study.report import markdown_comparisons, records_from_csv
    from .study.results import analyse

    summary, cells = folder / "summary.json", folder / "results.csv"
    for path in (summary, cells):
        if not path.is_file():
            raise ParaknowError(f"{path} not found: --study must name a folder written by `python -m "
                                "paraknow.report study` (summary.json and results.csv).")
    recipe = written_recipe(summary)
    figures = {"study": str(folder), "correction": recipe.correction, "equivalence_margin": recipe.equivalence_margin,
               "comparisons": analyse(recipe, records_from_csv(cells.read_text(encoding="utf-8")))}
    atomic_write_text(folder / "verdicts.md", markdown_comparisons(figures))
    return figures


def _finals(run_dirs, method: str) -> list[dict]:
    from .runs.jobs import run_info

    infos = [run_info(d) for d in run_dirs]
    return [{"seed": i.spec.get("seed"), "final_eval": i.final_eval} for i in infos
            if i.method == method and i.state == "finished" and i.final_eval]


def main(argv=None) -> int:
    from .study.runner import DEFAULT_WORKERS, WORKERS_HELP

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m paraknow.report",
                                     description="Write a README report with its provenance.")
    sub = parser.add_subparsers(dest="report", required=True)
    p = sub.add_parser("demo", help="accuracy of the demo pair on every task's test split")
    p.add_argument("--out", default=str(RESULTS_DIR / "demo_pair.json"))
    p.add_argument("--max-new-tokens", type=int, default=64)
    p = sub.add_parser("compare", help="vanilla / PiSSA / PKT fine-tuning of demo:student on a task")
    p.add_argument("--task", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=None, help="default docs/results/compare_<task>.json")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p = sub.add_parser("study", help="run or resume the shipped study and write its results and figures")
    p.add_argument("--recipe", default=str(PACKAGE_DIR.parent / "docs" / "examples" / "study-demo.json"))
    p.add_argument("--dir", default=None, help="study directory (default: the cache's studies/demo)")
    p.add_argument("--out", default=str(RESULTS_DIR / "study_demo"))
    p.add_argument("--workers", default=DEFAULT_WORKERS, help=WORKERS_HELP)  # checked by paraknow.core.threads
    p = sub.add_parser("reanalyse", help="the corrected verdicts of a written study, from its results.csv")
    p.add_argument("--study", default=str(RESULTS_DIR / "study_demo"),
                   help="a folder written by `study` (summary.json, results.csv); verdicts.json/.md go there")
    args = parser.parse_args(argv)
    import tempfile

    from .core.models import quiet_transformers

    quiet_transformers()
    try:
        if args.report == "demo":
            figures = demo_report(args.max_new_tokens)
            out = args.out
        elif args.report == "study":
            from .core.paths import cache_dir

            study_dir = Path(args.dir) if args.dir else cache_dir("studies") / "demo"
            figures = study_report(args.recipe, study_dir, Path(args.out), args.workers,
                                   progress=lambda m: print(m, file=sys.stderr, flush=True))
            out = str(Path(args.out) / "summary.json")
        elif args.report == "reanalyse":
            figures = reanalyse_report(Path(args.study))
            out = str(Path(args.study) / "verdicts.json")
        else:
            with tempfile.TemporaryDirectory(prefix="paraknow-compare-") as work:
                figures = compare_report(args.task, args.seeds, Path(work), args.max_new_tokens)
            out = args.out or str(RESULTS_DIR / f"compare_{args.task}.json")
    except ParaknowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = " ".join(["python -m paraknow.report", *(shlex.quote(a) for a in argv)])
    path = write_report(out, figures, command)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
