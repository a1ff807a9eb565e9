"""From cell records to per-arm results: the learning rates chosen (sweep.py), means with 95 % intervals over
seeds, paired differences against the baseline arm, the declared comparisons with their verdicts
(compare.py), and signal correlations. See docs/study.md for the rules.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..core.jobdir import read_json
from .compare import ArmData, compare_all, verdict_text
from .duplicates import duplicate_reason, find_duplicates
from .plan import Cell, plan_cells
from .recipe import Recipe
from .signals import SIGNALS
from .stats import Estimate, mean_interval, paired_difference, spearman
from .sweep import LR_SELECTIONS


def per_seed(recipe: Recipe, arm, records: dict) -> dict:
    """{seed: the arm's record for that seed} (the rate the recipe's `lr_selection` chose, sweep.py;
    seed None for a control)."""
    if not arm.trained:
        record = records.get(arm.name)
        return {None: record} if record and record.get("state") == "finished" else {}
    cells = {seed: [] for seed in recipe.seeds}
    for c in plan_cells(recipe):
        if c.arm == arm.name:
            cells[c.seed].append(records[c.cell_id])
    return LR_SELECTIONS[recipe.lr_selection](cells)


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


def read_predictions(out, record: dict) -> dict | None:
    """{item id: correct} from a cell's predictions.jsonl (None when the cell kept none)."""
    path = record.get("predictions")
    if not path or out is None or not (Path(out) / path).is_file():
        return None
    rows = [json.loads(line) for line in (Path(out) / path).read_text(encoding="utf-8").splitlines() if line]
    return {row["id"]: bool(row["correct"]) for row in rows}


def arm_data(recipe: Recipe, out, records: dict, by_arm: dict) -> dict[str, ArmData]:
    """Each arm's ArmData: its selected record per seed, finished swept rates per seed, predictions."""
    data = {}
    for arm in recipe.arms:
        rates = {}
        if arm.lr_sweep:
            for c in plan_cells(recipe):
                if c.arm == arm.name and records[c.cell_id].get("state") == "finished":
                    rates[c.seed] = rates.get(c.seed, 0) + 1
        items = {seed: read_predictions(out, r) for seed, r in by_arm[arm.name].items()}
        data[arm.name] = ArmData(by_arm[arm.name], rates, {s: v for s, v in items.items() if v is not None})
    return data


def comparisons_of(recipe: Recipe, out, records: dict, by_arm: dict, duplicates: dict) -> list[dict]:
    """results.json's `comparisons` (the recipe's declared families, corrected within each; an arm
    that duplicates another is left out of its family)."""
    found = compare_all(recipe.comparisons, arm_data(recipe, out, records, by_arm), recipe.correction,
                        recipe.equivalence_margin, {a: duplicate_reason(o) for a, o in duplicates.items()})
    return [c.to_dict() for c in found]


def analyse(recipe: Recipe, records: dict, out=None) -> list[dict]:
    """The comparisons of a study from its cell records alone ({cell_id: record}; `out` the study
    directory the records' predictions are relative to): a changed `comparisons`, margin or
    correction re-analysed without re-running a cell."""
    by_arm = {arm.name: per_seed(recipe, arm, records) for arm in recipe.arms}
    return comparisons_of(recipe, out, records, by_arm, find_duplicates(recipe, out))


def _arm_verdict(name: str, baseline: str, comparisons: list[dict], duplicates: dict) -> str:
    """The arm's verdict column: its first comparison in words (a duplicate, the baseline and arms
    only ever referred to say so)."""
    if name in duplicates:
        return duplicate_reason(duplicates[name])
    own = next((c for c in comparisons if c["arm"] == name), None)
    if own is not None:
        return verdict_text(own)
    return "baseline" if name == baseline else \
        ("reference" if any(c["reference"] == name for c in comparisons) else "not compared")


def _arm_signals(out: Path, by_seed: dict) -> dict | None:
    """Mean of each signal over the arm's exports (one per seed when the extraction is seeded)."""
    from .exports import signals_file

    exports = sorted({r["export"] for r in by_seed.values() if r.get("export")})
    found = [read_json(signals_file(Path(out) / e)) for e in exports]
    found = [f for f in found if f]
    if not found:
        return None
    return {**{name: (sum(vals) / len(vals) if (vals := [f[name] for f in found if f.get(name) is not None])
                      else None) for name in SIGNALS},
            "seed_warning": next((f["seed_warning"] for f in found if f.get("seed_warning")), None)}


def _arm_cost(by_seed: dict) -> dict | None:
    """The mean over the arm's chosen cells (one per seed) of each key of their `cost`; None when none
    recorded one (a control, or a study written before costs were)."""
    from .cost import COST_KEYS

    costs = [r["cost"] for r in by_seed.values() if r.get("cost")]
    if not costs:
        return None
    return {key: (sum(vals) / len(vals) if (vals := [c[key] for c in costs if c.get(key) is not None]) else None)
            for key in COST_KEYS}


def summarize(recipe: Recipe, out, records: dict) -> dict:
    """results.json's content from {cell_id: record}."""
    from .cells import CELL_FIELDS

    cells = plan_cells(recipe)
    by_arm = {arm.name: per_seed(recipe, arm, records) for arm in recipe.arms}
    chosen_ids = {Cell(r["arm"], r["seed"], r["lr"]).cell_id for by_seed in by_arm.values() for r in by_seed.values()}
    duplicates = find_duplicates(recipe, out)
    comparisons = comparisons_of(recipe, out, records, by_arm, duplicates)
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
                     "verdict": _arm_verdict(arm.name, base_arm.name, comparisons, duplicates),
                     "duplicate_of": duplicates.get(arm.name),
                     "signals": _arm_signals(out, by_seed), "cost": _arm_cost(by_seed),
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
    return {"baseline": base_arm.name, "cells": cell_rows, "arms": arms, "comparisons": comparisons,
            "duplicates": [{"arm": a, "duplicate_of": o, "reason": duplicate_reason(o)} for a, o in duplicates.items()],
            "equivalence_margin": recipe.equivalence_margin, "correction": recipe.correction,
            "signal_correlations": correlations}
