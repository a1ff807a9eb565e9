"""From cell records to per-arm results: learning-rate selection, means with 95 % intervals over
seeds, paired differences against the baseline arm, verdicts in words, and signal correlations.
See docs/study.md for the rules.
"""
from __future__ import annotations

from pathlib import Path

from ..core.jobdir import read_json
from .plan import Cell, plan_cells
from .recipe import Recipe
from .signals import SIGNALS
from .stats import Estimate, mean_interval, paired_difference, spearman


def select_lr(records: list[dict]) -> dict | None:
    """Of one arm's finished cells for one seed (one per learning rate), the one with the best
    VALIDATION accuracy; ties go to the lower validation loss, then to the smaller rate. Test
    numbers are never looked at. None when no cell finished."""
    finished = [r for r in records if r.get("state") == "finished"]
    if not finished:
        return None

    def key(r):
        acc = r.get("val_accuracy")
        loss = r.get("val_loss")
        return (-(acc if acc is not None else float("-inf")), loss if loss is not None else float("inf"), r["lr"])

    return min(finished, key=key)


def per_seed(recipe: Recipe, arm, records: dict) -> dict:
    """{seed: the arm's record for that seed} (the selected rate's for a sweep; seed None for a control)."""
    if not arm.trained:
        record = records.get(arm.name)
        return {None: record} if record and record.get("state") == "finished" else {}
    out = {}
    for seed in recipe.seeds:
        cells = [records[c.cell_id] for c in plan_cells(recipe) if c.arm == arm.name and c.seed == seed]
        chosen = select_lr(cells)
        if chosen is not None:
            out[seed] = chosen
    return out


def _values(by_seed: dict, key: str) -> dict:
    return {s: r[key] for s, r in by_seed.items() if r.get(key) is not None}


def _paired(arm_values: dict, base_values: dict) -> Estimate:
    """Paired by seed; a control's single value (key None) stands for every seed of the other side."""
    if None in arm_values and None in base_values:
        return paired_difference({0: arm_values[None]}, {0: base_values[None]})
    if None in arm_values:
        arm_values = {s: arm_values[None] for s in base_values}
    if None in base_values:
        base_values = {s: base_values[None] for s in arm_values}
    return paired_difference(arm_values, base_values)


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def verdict(diff: Estimate, baseline_label: str) -> str:
    """The paired difference in words (accuracy points, 95 % CI)."""
    if diff.n == 0 or diff.mean is None:
        return f"no result paired with {baseline_label} yet"
    if diff.lo is None:
        return f"{_points(diff.mean)} points vs {baseline_label} on one seed: too few seeds for an interval"
    ci = f"95 % CI [{_points(diff.lo)}, {_points(diff.hi)}]"
    if not diff.excludes_zero():
        return f"no difference from {baseline_label} detectable at this sample size ({ci})"
    return f"{_points(diff.mean)} points {'over' if diff.mean > 0 else 'under'} {baseline_label}, {ci}"


def _arm_signals(out: Path, by_seed: dict) -> dict | None:
    """Mean of each signal over the arm's exports (one per seed when the extraction is seeded)."""
    from .exports import signals_file

    exports = sorted({r["export"] for r in by_seed.values() if r.get("export")})
    found = [read_json(signals_file(Path(out) / e)) for e in exports]
    found = [f for f in found if f]
    if not found:
        return None
    return {name: (sum(vals) / len(vals) if (vals := [f[name] for f in found if f.get(name) is not None]) else None)
            for name in SIGNALS}


def summarize(recipe: Recipe, out, records: dict) -> dict:
    """results.json's content from {cell_id: record}."""
    from .cells import CELL_FIELDS

    cells = plan_cells(recipe)
    by_arm = {arm.name: per_seed(recipe, arm, records) for arm in recipe.arms}
    chosen_ids = {Cell(r["arm"], r["seed"], r["lr"]).cell_id for by_seed in by_arm.values() for r in by_seed.values()}
    arms = []
    base_arm = recipe.arm(recipe.baseline)
    base_acc = _values(by_arm[base_arm.name], "test_accuracy")
    for arm in recipe.arms:
        by_seed = by_arm[arm.name]
        acc, loss = _values(by_seed, "test_accuracy"), _values(by_seed, "test_loss")
        est, loss_est = mean_interval(acc.values()), mean_interval(loss.values())
        is_base = arm.name == base_arm.name
        diff = Estimate(0, None) if is_base else _paired(acc, base_acc)
        states = {}
        for c in cells:
            if c.arm == arm.name:
                state = records[c.cell_id]["state"]
                states[state] = states.get(state, 0) + 1
        arms.append({"arm": arm.name, "init": arm.init, "factor": arm.factor, "n": est.n, "mean": est.mean, "ci95": est.interval,
                     "diff_vs_baseline": None if is_base else diff.mean,
                     "diff_ci95": None if is_base else diff.interval,
                     "verdict": "baseline" if is_base else verdict(diff, base_arm.label()),
                     "signals": _arm_signals(out, by_seed),
                     "loss_mean": loss_est.mean, "loss_ci95": loss_est.interval,
                     "lr": {str(s): r.get("lr") for s, r in by_seed.items() if s is not None} or None,
                     "states": states})
    correlations = {}
    for name in SIGNALS:
        pairs = [(a["signals"][name], a["mean"]) for a in arms
                 if a["signals"] and a["signals"].get(name) is not None and a["mean"] is not None]
        correlations[name] = {"n": len(pairs),
                              "spearman": spearman([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else None}
    cell_rows = []
    for c in cells:
        record = records[c.cell_id]
        row = {key: record.get(key) for key in CELL_FIELDS}
        row["selected"] = c.cell_id in chosen_ids
        cell_rows.append(row)
    return {"baseline": base_arm.name, "cells": cell_rows, "arms": arms, "signal_correlations": correlations}
