"""Tiny study inputs for the study tests: a saved teacher/student pair, a few JSONL splits, a recipe."""
from __future__ import annotations

import json
from pathlib import Path

from tiny import make_tokenizer, tiny_llama

TEACHER = dict(layers=4, hidden=96, ffn=192, heads=6, kv_heads=2, seed=1)
STUDENT = dict(layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, seed=2)


def save_model(path: Path, **shape) -> str:
    tiny_llama(**shape).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return str(path)


def _records(pairs) -> str:
    return "".join(json.dumps({"prompt": f"{a}+{b}=", "completion": f"{a + b}"}) + "\n" for a, b in pairs)


def study_inputs(root: Path) -> dict:
    """Save the pair and the splits under `root`; returns the recipe's model and data keys."""
    root.mkdir(parents=True, exist_ok=True)
    splits = {"seed_data": [(1, 2), (3, 4), (5, 6), (7, 8)],
              "train_data": [(i, i + 1) for i in range(8)],
              "val_data": [(2, 2), (3, 3), (4, 4)],
              "test_data": [(5, 5), (6, 6), (1, 1), (2, 1)]}
    paths = {"teacher": save_model(root / "teacher", **TEACHER), "student": save_model(root / "student", **STUDENT)}
    for key, pairs in splits.items():
        (root / f"{key}.jsonl").write_text(_records(pairs))
        paths[key] = str(root / f"{key}.jsonl")
    return paths


def tiny_recipe(paths: dict, **overrides) -> dict:
    """A study of a few seconds per cell: 1 epoch over 8 records, 3 new tokens per answer."""
    recipe = {**paths,
              "train": {"epochs": 1, "batch": 4, "micro_batch": 2, "rank": 4, "alpha": 8, "max_length": 64,
                        "eval_max_new_tokens": 3, "device": "cpu"},
              "seeds": [0, 1], "budget_minutes": 30,
              "arms": [{"name": "vanilla", "init": "vanilla", "lr_sweep": [1e-4, 1e-2]},
                       {"name": "pkt", "init": "pkt", "extract": {"samples": 4}}]}
    recipe.update(overrides)
    return recipe


def write_recipe(path: Path, recipe: dict) -> str:
    path.write_text(json.dumps(recipe, indent=1))
    return str(path)
