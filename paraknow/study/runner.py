"""Running a study: every cell extract -> train -> evaluate, state on disk, resumable.

DIR layout:
  recipe.json                 the recipe as run (defaults filled in)
  study.json                  the study process: state running | finished | stopped | failed, pid,
                              started/finished, the cell running now, cells done, the executor
                              its cells run on (paraknow.runs.executors)
  stdout.log                  a background study's output (paraknow.study.control)
  .lock                       flock of the process running the study
  STOP                        (created by `stop_study` or by hand) no new cell starts and the running
                              cell's training stops at its next step; the cell is recorded `stopped`
  cells/<cell id>/cell.json   the cell's state (running | finished | failed | stopped) and numbers
  cells/<cell id>/run/        its training run directory (paraknow.runs.train's files)
  cells/<cell id>/stdout.log  the cell's training log (stdout and stderr)
  cells/<cell id>/predictions.jsonl  its test predictions, one line per item: id, correct, prediction
  exports/<key>/              PKT exports, keyed by content (teacher, student, seed data,
                              extraction settings) so cells that differ only in learning rate share one
  exports/<key>.signals.json  the export's cheap signals (paraknow.study.signals)
  teachers/random-<hash>-seed<S>/  a teacher's architecture with random weights (torch seed S), one per seed
  results.json, results.csv, report.html

Cells run one after another in this process (`paraknow.runs.train.train`, not a `train --spec`
subprocess): a subprocess would re-import torch and transformers for every cell, seconds that
small cells cannot afford against the 5 % overhead allowance, while the study itself already
is the unit that survives interruption (a cell left `running` is simply rerun by --resume).
With `--executor ray` each cell (`run_cell`) runs as a Ray task instead (`--workers` at a time),
writing into DIR on a filesystem the cluster shares (docs/cluster.md).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path
from typing import Callable

from ..core.errors import ParaknowError, first_line
from ..core.fsio import atomic_write_json, atomic_write_text, check_writable_parent
from ..core.jobdir import LOG_FILE, STOP_FILE, read_json
from ..core.processes import proc_start_time
from ..core.provenance import code_version
from ..core.threads import AUTO, THREADS_PER_WORKER, load_average, thread_policy, torch_threads
from ..runs.executors import ExecutorConfig, make_executor
from ..transfer.lora import MANIFEST_FILE
from .budget import BudgetGate, calibrate, estimate_study, measured_factors, record_cell, timing_file
from .cells import (CELL_FIELDS, CELL_FILE, CELLS_DIR, LOCK_FILE, RECIPE_FILE, RUN_DIR, STUDY_FILE, cell_dir,
    read_cell, write_predictions)
from .cost import cell_cost
from .exports import EXPORTS_DIR, cell_export, export_key, signals_file
from .plan import Cell, check_recipe, plan_cells, train_config
from .progress import CellProgress
from .recipe import Recipe, cells_part

DEFAULT_WORKERS = AUTO  # the thread policy, paraknow/core/threads.py (bench/bench_study_parallel.py, bench_cell.py)
WORKERS_HELP = (f"cells run at a time: {AUTO} (default: as many as free cores on a CPU, one on a GPU) or a number; "
                f"each cell runs with {THREADS_PER_WORKER} torch thread on a CPU (paraknow/core/threads.py)")
# a cell's record: the fields of results.json's cells (docs/study.md) plus where its files are
Progress = Callable[[str], None]


# ---------------------------------------------------------------------------------------
# Cell state on disk


def _write_cell(out: Path, cell: Cell, **fields) -> dict:
    record = {**dict.fromkeys(CELL_FIELDS), "arm": cell.arm, "seed": cell.seed, "lr": cell.lr,
              "state": "running", "commit": code_version(), **fields}
    atomic_write_json(cell_dir(out, cell) / CELL_FILE, record)
    return record


# ---------------------------------------------------------------------------------------
# Exports and teachers


# ---------------------------------------------------------------------------------------
# One cell


class CellStopped(Exception):
    """The study was asked to stop (DIR/STOP) while this cell ran."""


def _stop_requested(out: Path) -> bool:
    return (Path(out) / STOP_FILE).exists()


def _request_stop(out: Path) -> None:
    if not _stop_requested(out):
        atomic_write_text(Path(out) / STOP_FILE, f"{time.time()}\n")


@contextlib.contextmanager
def _sigterm_stops(out: Path):
    """SIGTERM to the study process stops the study as DIR/STOP does (while a cell trains, the
    training's own handler stops it first, and a stopped cell ends the study)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: _request_stop(out))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_relay(out: Path, run_dir: Path):
    """A TrainerCallback that passes DIR/STOP on to the running training (RUN_DIR/STOP), which
    then stops cleanly at the end of this step."""
    from transformers import TrainerCallback

    class StopRelay(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if _stop_requested(out) and not (run_dir / STOP_FILE).exists():
                atomic_write_text(run_dir / STOP_FILE, f"{time.time()}\n")
            return control

    return StopRelay()


def _eval_settings(config) -> dict:
    """The test evaluation uses the training's own evaluation settings (answer matching included)."""
    return {"max_new_tokens": config.eval_max_new_tokens, "batch_size": config.eval_batch,
            "max_length": config.max_length, "match": config.match}


def _run_trained(recipe: Recipe, cell: Cell, out: Path, test_records, progress: CellProgress) -> dict:
    from ..runs.evaluate import evaluate
    from ..runs.train import train

    arm = recipe.arm(cell.arm)
    folder = cell_dir(out, cell)
    init, fields = arm.init, {}
    if arm.init == "pkt":
        progress.phase("export (sensitivity, mapping, factorisation)")
        device = recipe.train_settings(arm).get("device", "auto")
        export = cell_export(recipe, arm, cell.seed, out, device)
        init, fields["export"] = str(export), str(export.relative_to(out))
        progress.warn((read_json(signals_file(export)) or {}).get("seed_warning"))
    if _stop_requested(out):
        raise CellStopped()
    run_dir = folder / RUN_DIR
    config = train_config(recipe, arm, cell.seed, cell.lr, init, out=str(run_dir))
    progress.phase("loading the student")
    with open(folder / LOG_FILE, "w", encoding="utf-8") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        outcome = train(config, callbacks=[_stop_relay(out, run_dir), progress.trainer_callback(config)])
    if outcome.state == "stopped":
        raise CellStopped()
    if outcome.state != "finished":
        raise ParaknowError(f"training ended {outcome.state}: {outcome.status.get('error') or f'see {LOG_FILE}'}")
    val = outcome.status.get("final_eval") or {}
    test = evaluate(outcome.model, outcome.tokenizer, test_records, progress=progress.evaluation("test"),
                    **_eval_settings(config))
    return {**fields, "run_dir": str(Path(CELLS_DIR) / cell.cell_id / RUN_DIR), "val_accuracy": val.get("accuracy"),
            "val_loss": val.get("loss"), "val_n": val.get("n"), "test_accuracy": test.accuracy,
            "test_loss": test.loss, "test_n": test.n,
            "predictions": write_predictions(out, cell, test.predictions),
            "cost": cell_cost(outcome.status, out / fields["export"] if "export" in fields else None)}


def _run_control(recipe: Recipe, cell: Cell, out: Path, test_records, progress: CellProgress) -> dict:
    from ..core.models import load_model
    from ..runs.evaluate import evaluate

    arm = recipe.arm(cell.arm)
    config = train_config(recipe, arm, 0, None, "vanilla")
    ref = recipe.student if arm.init == "untuned" else recipe.teacher
    progress.phase(f"loading the {arm.init} model")
    model, tokenizer = load_model(ref, device=config.device)
    test = evaluate(model, tokenizer, test_records, progress=progress.evaluation("test"), **_eval_settings(config))
    return {"test_accuracy": test.accuracy, "test_loss": test.loss, "test_n": test.n,
            "predictions": write_predictions(out, cell, test.predictions)}


def run_cell(recipe: Recipe, cell: Cell, out: Path, test_records) -> dict:
    """Run one cell from scratch and record it; an error marks it failed (and is not raised), a
    stop request marks it stopped."""
    folder = cell_dir(out, cell)
    shutil.rmtree(folder, ignore_errors=True)  # a rerun starts clean
    folder.mkdir(parents=True)
    started, cpu0 = time.time(), time.process_time()
    _write_cell(out, cell, started=started)
    try:
        run = _run_trained if recipe.arm(cell.arm).trained else _run_control
        numbers = run(recipe, cell, out, test_records, CellProgress(folder, _cell_name(cell)))
        numbers["cpu_s"] = round(time.process_time() - cpu0, 3)  # for the overhead factors (budget.py)
    except CellStopped:
        return _write_cell(out, cell, state="stopped", started=started, seconds=round(time.time() - started, 3))
    except Exception as exc:  # noqa: BLE001 - a failed cell is recorded, the study goes on
        error = str(exc) if isinstance(exc, ParaknowError) else f"{type(exc).__name__}: {first_line(exc)}"
        return _write_cell(out, cell, state="failed", error=error, started=started,
                           seconds=round(time.time() - started, 3))
    return _write_cell(out, cell, state="finished", started=started, seconds=round(time.time() - started, 3),
                       **numbers)


# ---------------------------------------------------------------------------------------
# The study


def _check_out(out: Path, recipe: Recipe, resume: bool) -> None:
    check_writable_parent(out)  # a name too long, a symbolic link, a parent that is a file or read-only
    stored = read_json(out / RECIPE_FILE)
    if stored is not None:
        if not resume:
            raise ParaknowError(f"{out} already holds a study: pass --resume to continue it, or choose a new --out.")
        current = cells_part(json.loads(json.dumps(recipe.to_dict())))  # as it reads back from recipe.json
        stored = cells_part(stored)  # the analysis keys may change: the cells are re-analysed
        changed = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
        if changed:
            raise ParaknowError(f"the recipe differs from {out / RECIPE_FILE} (in {', '.join(changed)}): "
                                "resume with the recipe as run, or start a new --out.")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ParaknowError(f"{out} exists and is not a study directory; choose a new --out.")


def prepare(recipe: Recipe, out, resume: bool = False, calibration=None,
            workers=DEFAULT_WORKERS) -> tuple[list[Cell], object]:
    """Every check that comes before launch, in order, writing nothing: the recipe against the
    models and data, DIR, the thread policy for `workers` (paraknow.core.threads) and the time
    estimate at that policy against the budget. Returns (cells still to run, their TimeEstimate,
    which carries the policy). Raises ParaknowError."""
    out = Path(out).expanduser().absolute()
    sizes = check_recipe(recipe)
    policy = thread_policy(workers, _on_gpu(recipe))
    _check_out(out, recipe, resume)
    cells = plan_cells(recipe)
    records = {c.cell_id: read_cell(out, c) for c in cells}
    pending = [c for c in cells if records[c.cell_id]["state"] != "finished"]
    measured: dict[str, list[float]] = {}
    for cell in cells:
        record = records[cell.cell_id]
        if record["state"] == "finished" and record.get("seconds") is not None:
            measured.setdefault(cell.arm, []).append(record["seconds"])
    keys = {c.cell_id: export_key(recipe, recipe.arm(c.arm), c.seed) for c in pending
            if recipe.arm(c.arm).init == "pkt"}
    keys = {cid: key for cid, key in keys.items() if not (out / EXPORTS_DIR / key / MANIFEST_FILE).is_file()}
    if pending and calibration is None:
        with torch_threads(policy.threads):
            calibration = calibrate(recipe, sizes)
    estimate = estimate_study(recipe, pending, sizes, calibration,
                              {arm: sum(v) / len(v) for arm, v in measured.items()}, keys, policy,
                              measured_factors(timing_file(recipe, policy.threads)))
    spent = _spent_s(out)
    if spent + estimate.total_s > recipe.budget_minutes * 60:
        raise ParaknowError(f"the study needs {estimate.describe()}"
                            + (f" after the {spent / 60:.1f} min it has spent" if spent else "")
                            + f", over its budget of {recipe.budget_minutes:g} min: raise budget_minutes "
                            "(--budget-minutes), or cut arms, seeds, epochs or data.")
    return pending, estimate


def _spent_s(out: Path) -> float:
    """Wall seconds the study's earlier sessions spent (study.json `spent_s`; 0 for a new study)."""
    return float((read_json(out / STUDY_FILE) or {}).get("spent_s") or 0.0)


@contextlib.contextmanager
def _study_lock(out: Path):
    """One process per study directory (an flock, released when the process dies)."""
    with open(out / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            status = read_json(out / STUDY_FILE) or {}
            raise ParaknowError(f"{out} is being run by another process (pid {status.get('pid', '?')}); "
                                "stop it first (create STOP in the study directory).") from None
        yield


def _clear_old_stop(out: Path) -> None:
    """Resuming is the request to go on: remove a STOP left from before -- but not one made after
    the app launched this process (paraknow.study.control records `launched` in study.json)."""
    status = read_json(out / STUDY_FILE) or {}
    since = status.get("launched") if status.get("phase") == "starting" else None
    try:
        if since is None or (out / STOP_FILE).stat().st_mtime < since:
            (out / STOP_FILE).unlink()
    except FileNotFoundError:
        pass


def _write_status(out: Path, status: dict, **changes) -> None:
    status.update(changes)
    atomic_write_json(out / STUDY_FILE, status)


def _cell_name(cell: Cell) -> str:
    return cell.arm + ("" if cell.seed is None else f" seed {cell.seed}") + ("" if cell.lr is None else f" lr {cell.lr:g}")


def _outcome(record: dict) -> str:
    if record["state"] == "finished":
        acc = record["test_accuracy"]
        return f"finished in {record['seconds']:.0f} s, test accuracy " + ("-" if acc is None else f"{100 * acc:.1f} %")
    return record["state"].upper() + (f": {record['error']}" if record["error"] else "")


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _on_gpu(recipe: Recipe) -> bool:
    """Whether the recipe's cells train on a GPU (then they share it: one worker under `auto`)."""
    from ..runs.train_model import train_device

    return any(train_device(train_config(recipe, arm, 0, None, "vanilla")).startswith("cuda")
               for arm in recipe.arms if arm.trained)


def _lost(out: Path, cell: Cell, exc: ParaknowError) -> dict:
    """The record of a cell that the executor lost (e.g. its Ray node died): failed, rerun by --resume."""
    return _write_cell(out, cell, state="failed", error=str(exc))


def _run_serially(pending: list[Cell], out: Path, status: dict, say: Progress, runner, recipe: Recipe,
                  test_records, allows):
    """The cells in plan order, one at a time (`runner.call`), while `allows(cell)` (the budget)."""
    for k, cell in enumerate(pending, 1):
        if _stop_requested(out) or not allows(cell):
            return
        say(f"[{k}/{len(pending)}] {_cell_name(cell)}: running")
        _write_status(out, status, cell=cell.cell_id, cells_running=[cell.cell_id])
        try:
            record = runner.call(run_cell, recipe, cell, out, test_records)
        except ParaknowError as exc:
            record = _lost(out, cell, exc)
        _write_status(out, status, cell=None, cells_running=[])
        if record["state"] == "stopped":  # STOP, or SIGTERM caught by the cell's training
            _request_stop(out)
        yield cell, record


def _run_cells(recipe: Recipe, pending: list[Cell], out: Path, status: dict, say: Progress, workers: int,
               threads: int, runner, allows):
    """Yield (cell, record) as cells finish: in plan order one at a time (`runner.call`: in this
    process, or one Ray task after another), or `workers` at a time (`runner.pool`: worker
    processes, or Ray tasks); each local cell with `threads` torch threads. No new cell starts
    after STOP, nor one that `allows(cell)` refuses (the budget: the cells running go on)."""
    from ..core.data import load_records

    test_records = load_records(recipe.test_data)[:recipe.test_limit]  # the items scored (None: all)
    if workers == 1:
        with torch_threads(threads):
            yield from _run_serially(pending, out, status, say, runner, recipe, test_records, allows)
        return
    queue, running = list(enumerate(pending, 1))[::-1], {}  # popped from the end: plan order
    with runner.pool(workers, _init_worker, (threads,)) as pool:
        while True:
            while len(running) < workers and queue and not _stop_requested(out) and allows(queue[-1][1]):
                k, cell = queue.pop()
                say(f"[{k}/{len(pending)}] {_cell_name(cell)}: running")
                running[pool.submit(run_cell, recipe, cell, out, test_records)] = cell
                ids = [c.cell_id for c in running.values()]
                _write_status(out, status, cell=ids[0], cells_running=ids)
            if not running:
                return
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                cell = running.pop(future)
                ids = [c.cell_id for c in running.values()]
                _write_status(out, status, cell=ids[0] if ids else None, cells_running=ids)
                try:
                    record = future.result()
                except ParaknowError as exc:
                    record = _lost(out, cell, exc)
                if record["state"] == "stopped":
                    _request_stop(out)  # the other workers' cells stop too
                yield cell, record


def check_devices(recipe: Recipe, executor: ExecutorConfig) -> ExecutorConfig:
    """Refuse (ParaknowError) an arm whose training device the executor's tasks cannot see (a CUDA
    device on a Ray task that asks for no GPU); returns the executor."""
    for arm in recipe.arms:
        executor.check_device(recipe.train_settings(arm).get("device"))
    return executor


def run_study(recipe: Recipe, out, resume: bool = False, progress: Progress | None = None,
              calibration=None, workers: int = DEFAULT_WORKERS, executor: ExecutorConfig | None = None) -> dict:
    """Run (or resume) a study into `out` and return its results (also written there).

    Bad input, an incompatible pair or a study over budget raise ParaknowError before anything
    is written. `calibration`: a budget.Calibration to use instead of measuring one. A STOP file
    in `out` stops the study after (or inside) the running cell; resuming removes it. `workers`:
    how many cells run at a time, `auto` (free cores) or a number; the thread policy
    (paraknow.core.threads) and the load average are recorded in study.json and results.json's timing.
    `executor`: where the cells run (default: this machine; see paraknow.runs.executors).
    """
    from .report import write_outputs

    say = progress or (lambda message: None)
    out = Path(out).expanduser().absolute()
    executor = check_devices(recipe, (executor or ExecutorConfig()).validate())
    pending, estimate = prepare(recipe, out, resume, calibration, workers)
    policy = estimate.policy
    runner = make_executor(executor)
    out.mkdir(parents=True, exist_ok=True)
    with _study_lock(out), _sigterm_stops(out):
        _clear_old_stop(out)
        atomic_write_json(out / RECIPE_FILE, recipe.to_dict())
        total = len(plan_cells(recipe))
        started = time.time()
        gate = BudgetGate(recipe.budget_minutes * 60, estimate, _spent_s(out), started)
        timings = timing_file(recipe, policy.threads)
        status = {"state": "running", "pid": os.getpid(), "pid_start": proc_start_time(os.getpid()),
                  "started": started, "finished": None, "cell": None, "cells_total": total,
                  "cells_to_run": len(pending), "cells_run": 0, "estimate_s": round(estimate.total_s, 1),
                  "spent_s": round(gate.spent_before_s, 1), "budget_stop": None,
                  "executor": executor.to_dict(), "threads": policy.to_dict(), "error": None}
        _write_status(out, status)
        say(f"study {out}: {total} cells, {total - len(pending)} already finished; {estimate.describe()}")
        try:
            for k, (cell, record) in enumerate(_run_cells(recipe, pending, out, status, say, policy.workers,
                                                                policy.threads, runner, gate.allows), 1):
                gate.observe(cell, record)
                if record["state"] == "finished":
                    record_cell(timings, estimate, cell.cell_id, record)
                say(f"[{k}/{len(pending)}] {_cell_name(cell)}: {_outcome(record)}")
                _write_status(out, status, cells_run=k, spent_s=round(gate.spent_s(), 1))
                write_outputs(recipe, out, with_html=False)
        except BaseException as exc:
            _write_status(out, status, state="failed", finished=time.time(), cell=None,
                          error="interrupted" if isinstance(exc, KeyboardInterrupt) else
                          f"{type(exc).__name__}: {first_line(exc)}")
            raise
        budget_stop = gate.message(len(pending) - status["cells_run"]) if gate.refused else None
        stopped = _stop_requested(out) or budget_stop is not None
        if stopped:
            say(budget_stop or "stopped: resume with --resume")
        timing = {"estimate_s": round(estimate.total_s, 1), "wall_s": round(time.time() - started, 1),
                  "cells": status["cells_run"], **policy.to_dict(), "load_average_end": load_average(),
                  "budget_stop": budget_stop}
        results = write_outputs(recipe, out, timing=timing)
        _write_status(out, status, state="stopped" if stopped else "finished", finished=time.time(),
                      wall_s=timing["wall_s"], spent_s=round(gate.spent_s(), 1), budget_stop=budget_stop)
        return results
