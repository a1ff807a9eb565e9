"""A study directory's layout (see paraknow.study.runner) and the record of each cell on disk."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.fsio import atomic_write_text
from ..core.jobdir import read_json
from .plan import Cell

RECIPE_FILE = "recipe.json"

STUDY_FILE = "study.json"  # the study process: state, pid, current cell (paraknow.study.control reads it)

LOCK_FILE = ".lock"  # held (flock) by the process running the study

CELLS_DIR = "cells"

CELL_FILE = "cell.json"

RUN_DIR = "run"

CELL_STATES = ("running", "finished", "failed", "stopped")  # and "pending" for a cell that never started

PREDICTIONS_FILE = "predictions.jsonl"  # one line per scored test item: id, correct, prediction

CELL_FIELDS = ("arm", "seed", "lr", "state", "test_accuracy", "test_loss", "test_n", "val_accuracy", "val_loss",
               "val_n", "seconds", "run_dir", "export", "predictions", "error", "cost", "commit")
# *_n: the items scored; commit: the code that ran the cell (paraknow.core.provenance.code_version)


def cell_dir(out: Path, cell: Cell) -> Path:
    return Path(out) / CELLS_DIR / cell.cell_id


def read_cell(out: Path, cell: Cell) -> dict:
    """The cell's record, or {"state": "pending"} when it never started."""
    record = read_json(cell_dir(out, cell) / CELL_FILE)
    return record if record else {"arm": cell.arm, "seed": cell.seed, "lr": cell.lr, "state": "pending"}


def write_predictions(out: Path, cell: Cell, predictions: list[dict]) -> str:
    """Write the cell's test predictions (EvalResult.predictions) as PREDICTIONS_FILE; returns its
    path relative to the study directory (results.json's `predictions`)."""
    path = cell_dir(out, cell) / PREDICTIONS_FILE
    atomic_write_text(path, "".join(json.dumps({"id": p["id"], "correct": bool(p["correct"]),
                                                "prediction": p["prediction"]}) + "\n" for p in predictions))
    return str(path.relative_to(Path(out)))
