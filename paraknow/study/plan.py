"""The cells of a study and the checks made before any of them runs.

A cell is one (arm, seed, learning rate): a trained arm has one cell per seed and per rate of
its `lr_sweep` (one rate when it has none); a control (`untuned`, `teacher`) is deterministic
and has a single cell (seed and lr None) that every seed is compared against.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, fields

from ..core.errors import ParaknowError
from ..core.validate import check_rank_fits
from ..runs.train_config import TrainConfig
from .recipe import Recipe

DEFAULT_LR = next(f.default for f in fields(TrainConfig) if f.name == "lr")


@dataclass(frozen=True)
class Cell:
    arm: str
    seed: int | None
    lr: float | None

    @property
    def cell_id(self) -> str:
        """Folder name under DIR/cells/ (arm names are restricted to safe characters)."""
        if self.seed is None:
            return self.arm
        return f"{self.arm}__seed{self.seed}" + ("" if self.lr is None else f"__lr{self.lr:g}")


def plan_cells(recipe: Recipe) -> list[Cell]:
    """Controls first (cheap, and they frame the rest), then seed by seed, arm by arm, so
    partial results compare arms on the same seeds early."""
    cells = [Cell(arm.name, None, None) for arm in recipe.arms if not arm.trained]
    for seed in recipe.seeds:
        for arm in recipe.arms:
            if arm.trained:
                lrs = arm.lr_sweep or [float(recipe.train_settings(arm).get("lr", DEFAULT_LR))]
                cells += [Cell(arm.name, seed, float(lr)) for lr in lrs]
    return cells


@dataclass
class DataSizes:
    """Record counts of the study's datasets (for the time estimate)."""
    seed: int
    train: int
    val: int
    test: int


def _prefixed(path: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ParaknowError as exc:
        raise ParaknowError(f"recipe {path}: {exc}") from None


def check_recipe(recipe: Recipe) -> DataSizes:
    """Everything that can be checked without loading weights: the datasets, every cell's
    training settings, and whether the teacher/student pair can transfer for each PKT arm
    (depth, width, and the tokenizer when embeddings move). Raises ParaknowError."""
    from ..core.data import load_records

    counts = {key: len(_prefixed(f"{key}_data", load_records, getattr(recipe, f"{key}_data")))
              if getattr(recipe, f"{key}_data") else 0 for key in ("seed", "train", "val", "test")}
    counts["test"] = min(counts["test"], recipe.test_limit or counts["test"])  # the items scored
    counts["val"] = min(counts["val"], recipe.val_limit or counts["val"])
    for i, arm in enumerate(recipe.arms):
        if arm.trained:
            for lr in arm.lr_sweep or [None]:
                _prefixed(f"arms[{i}] ({arm.name}) training settings", _check_training, recipe, arm, lr)
        if arm.init == "pkt":
            _check_pair(recipe, arm, i, counts["seed"])
    return DataSizes(**counts)


@functools.lru_cache(maxsize=16)
def default_pkt_targets(teacher: str, student: str) -> tuple[str, ...]:
    """The modules a default PKT export of this pair trains: the attention and FFN projections, and
    embed_tokens and lm_head when the two tokenizers are the same (paraknow.transfer.plan.transfer_roles)."""
    from ..core.compatibility import transfer_roles
    from ..core.models import describe_ref

    return tuple(transfer_roles(describe_ref(teacher), describe_ref(student), None))


def train_config(recipe: Recipe, arm, seed: int, lr: float | None, init: str, out: str | None = None):
    """The TrainConfig of one cell. PKT trains at its export's rank and alpha, so those (and the
    target modules) are left to the export. Vanilla LoRA and PiSSA train the modules the default
    PKT export trains (embedding LoRA included when the tokenizers match), as the Fine-tune page's
    comparison does, so that a difference is the initialisation and not the set of trained
    modules -- unless the recipe sets `target_modules` for them."""
    settings = recipe.train_settings(arm)
    if arm.init == "pkt":
        for key in ("rank", "alpha", "target_modules"):
            settings.pop(key, None)
    elif arm.trained and "target_modules" not in settings and recipe.pkt_teacher() is not None:
        settings["target_modules"] = list(default_pkt_targets(recipe.pkt_teacher(), recipe.student))
    if lr is not None:
        settings["lr"] = lr
    if recipe.val_limit is not None or "eval_limit" not in settings:  # the recipe's val_limit; else all items
        settings["eval_limit"] = recipe.val_limit
    return TrainConfig(student=recipe.student, data=recipe.train_data, eval_data=recipe.val_data,
                       out=out, init=init, seed=seed, label=f"{arm.name} seed {seed}", **settings,
                       **recipe.distill_settings(arm))


def _check_training(recipe: Recipe, arm, lr) -> None:
    config = train_config(recipe, arm, 0, lr, "vanilla" if arm.init == "pkt" else arm.init)
    if arm.init == "pkt":  # checked at the rank the export will have
        transfer = recipe.transfer_config(arm, 0)
        config.rank, config.alpha = transfer.rank, transfer.alpha
    config.resolved(check_out=False)


def _check_pair(recipe: Recipe, arm, i: int, n_seed: int) -> None:
    from ..core.architecture import describe_config
    from ..core.compatibility import check_transferable
    from ..core.models import load_config

    where = f"arms[{i}] ({arm.name})"
    config = recipe.transfer_config(arm, 0)
    sens = recipe.sensitivity_config(arm)
    if sens.samples > n_seed:
        raise ParaknowError(f"recipe {where}.extract.samples: {sens.samples} seed samples asked but seed_data "
                            f"holds {n_seed}; lower samples or give more seed data.")
    teacher = describe_config(_prefixed(f"{where} teacher", load_config, recipe.teacher_of(arm)))
    student = describe_config(_prefixed("student", load_config, recipe.student))
    try:  # depth, width of the selected modules, embeddings across different tokenizers
        roles = check_transferable(teacher, student, config).roles
    except ParaknowError as exc:
        raise ParaknowError(f"the pair cannot transfer for {where}: {exc}") from None
    for role in roles:
        try:
            check_rank_fits(config.rank, student.shapes[role], f"the student's {role}")
        except ParaknowError as exc:
            raise ParaknowError(f"recipe {where}.extract.rank: {exc}", setting="rank") from None
