"""Learning rates of a study: the sweeps and how a rate is chosen on validation (docs/study.md).

A sweep is an arm's `lr_sweep`, or the recipe's `train.lr_sweep` for every trained arm that has
none of its own: a list of rates, or `true` for the default -- SWEEP_POINTS rates a factor
SWEEP_FACTOR apart, centred on the arm's own rate. `lr_selection` (../shared/SPEC.md section 11):
  per-arm   one rate for the arm: the best mean validation accuracy over its seeds (the default)
  per-seed  each seed keeps its own best rate
Ties go to the lower (mean) validation loss, then to the smaller rate. Test numbers are never read.
"""
from __future__ import annotations

import math

from ..core.errors import ParaknowError

SWEEP_POINTS = 5
SWEEP_FACTOR = math.sqrt(2)
SWEEP_HELP = (f"a list of learning rates, or true for {SWEEP_POINTS} rates a factor sqrt(2) apart centred on "
              "the arm's rate")


def default_sweep(centre: float) -> list[float]:
    """SWEEP_POINTS rates a factor SWEEP_FACTOR apart with `centre` in the middle (4 significant digits)."""
    half = SWEEP_POINTS // 2
    return [float(f"{centre * SWEEP_FACTOR ** k:.4g}") for k in range(-half, SWEEP_POINTS - half)]


def parse_sweep(value, path: str) -> list[float] | bool:
    """A recipe's sweep: True (the default sweep, resolved per arm by `resolve_sweep`) or a list of rates."""
    if value is True:
        return True
    if not isinstance(value, list) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value):
        raise ParaknowError(f"recipe {path}: must be {SWEEP_HELP}, e.g. [1e-4, 3e-4, 1e-3].")
    if len(set(value)) != len(value):
        raise ParaknowError(f"recipe {path}: lists a learning rate twice.")
    return [float(v) for v in value]


def resolve_sweep(sweep: list[float] | bool | None, centre: float) -> list[float] | None:
    return default_sweep(centre) if sweep is True else sweep


def _mean(records: list[dict], key: str, missing: float) -> float:
    values = [r.get(key) for r in records]
    return missing if any(v is None for v in values) else sum(values) / len(values)


def _best(records: list[dict]) -> float:
    """The rate of `records` (finished cells, several rates) with the best mean validation accuracy."""
    by_rate: dict[float, list[dict]] = {}
    for r in records:
        by_rate.setdefault(r["lr"], []).append(r)
    return min(by_rate, key=lambda lr: (-_mean(by_rate[lr], "val_accuracy", -math.inf),
                                        _mean(by_rate[lr], "val_loss", math.inf), lr))


def _finished(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("state") == "finished"]


def select_lr(records: list[dict]) -> dict | None:
    """Of one seed's cells (one per rate), the finished one with the best validation accuracy; None
    when none finished."""
    if not (finished := _finished(records)):
        return None
    best = _best(finished)
    return next(r for r in finished if r["lr"] == best)


def per_seed(cells: dict) -> dict:
    """{seed: [records, one per rate]} -> {seed: the record of that seed's best rate}."""
    return {seed: chosen for seed, records in cells.items() if (chosen := select_lr(records)) is not None}


def per_arm(cells: dict) -> dict:
    """{seed: [records, one per rate]} -> {seed: its record at the arm's one rate}: the best mean
    validation accuracy over the seeds that finished that rate (a seed whose cell at that rate
    did not finish is left out, and the comparisons call the arm's seeds unequal)."""
    finished = [r for records in cells.values() for r in _finished(records)]
    if not finished:
        return {}
    best = _best(finished)
    return {seed: r for seed, records in cells.items() for r in _finished(records) if r["lr"] == best}


LR_SELECTIONS = {"per-arm": per_arm, "per-seed": per_seed}
DEFAULT_LR_SELECTION = "per-arm"


def parse_selection(value) -> str:
    if not isinstance(value, str) or value not in LR_SELECTIONS:
        raise ParaknowError(f"recipe lr_selection: {value!r} is not one of {', '.join(LR_SELECTIONS)} "
                            f"(default {DEFAULT_LR_SELECTION}).")
    return value
