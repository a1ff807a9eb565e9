"""Arms that are one experiment run twice, so that they are not counted as two pieces of evidence.

Two trained arms are duplicates when they have the same init, training settings, distillation and
learning rates and -- for PKT -- exports with the same content on every seed (the same layer map and selection give
the same factors: e.g. a `cka` layer map that picks the `first` layers on this pair). The later arm
in the recipe is the duplicate of the earlier one; its comparisons are left out of their family
(compare.compare_all) and results.json lists it under `duplicates`. A PKT arm is judged only once
every seed's export exists.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from ..core.fsio import sha256_bytes
from ..transfer.export import RESIDUAL_DIR, SELECTION_FILE
from ..transfer.lora import ADAPTER_WEIGHTS, MANIFEST_FILE
from .exports import EXPORTS_DIR, export_key
from .recipe import Recipe


@functools.lru_cache(maxsize=1024)
def export_digest(path: Path) -> str:
    """Content of an export's factors (adapter, residual adapter) and selection; an export directory
    never changes once made, so its digest is kept for the process."""
    files = [path / ADAPTER_WEIGHTS, path / RESIDUAL_DIR / ADAPTER_WEIGHTS, path / SELECTION_FILE]
    return sha256_bytes(b"".join(sha256_bytes(f.read_bytes()).encode() if f.is_file() else b"-" for f in files))


def _signature(recipe: Recipe, arm, out: Path) -> str | None:
    """What makes the arm's cells what they are; None while a PKT export is still to be made."""
    exports = []
    if arm.init == "pkt":
        paths = [out / EXPORTS_DIR / export_key(recipe, arm, seed) for seed in recipe.seeds]
        if not all((p / MANIFEST_FILE).is_file() for p in paths):
            return None
        exports = [export_digest(p) for p in paths]
    return json.dumps({"init": arm.init, "train": recipe.train_settings(arm), "lr_sweep": arm.lr_sweep,
                       "distill": recipe.distill_settings(arm), "exports": exports}, sort_keys=True, default=str)


def find_duplicates(recipe: Recipe, out) -> dict[str, str]:
    """{arm: the earlier arm it duplicates} over the trained arms (empty without a study directory)."""
    if out is None:
        return {}
    first: dict[str, str] = {}
    found = {}
    for arm in recipe.arms:
        if arm.trained and (signature := _signature(recipe, arm, Path(out))) is not None:
            if signature in first:
                found[arm.name] = first[signature]
            else:
                first[signature] = arm.name
    return found


def duplicate_reason(original: str) -> str:
    return (f"duplicate of {original}: the same initialisation and training on every seed (same layer map and "
            f"selection); not counted as evidence of its own")
