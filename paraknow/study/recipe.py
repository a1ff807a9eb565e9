"""A study recipe: its keys, parsing (JSON or YAML), and the checks made before anything runs.

The recipe file is the whole state of a study (docs/study.md). Its keys are fixed; the keys of
`train` are TrainConfig's fields and those of `extract` are TransferConfig's and
SensitivityConfig's (the `extract` command's options by long name) plus `teacher` and
`teacher_weights` -- read from those dataclasses, so a new option is a recipe key at once.
Every error names the key path (`arms[2].extract.structure`) and what is allowed there.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..core.errors import ParaknowError, first_line
from ..core.options import default_of, hint_of
from ..core.validate import check_number, check_seed, value_problem
from ..runs.inits import INITS
from ..runs.train_config import TrainConfig
from ..transfer.controls import BLOCK_WEIGHTS
from ..transfer.plan import TransferConfig
from ..transfer.recipe import read_recipe_text, recipe_json
from ..transfer.sensitivity import SensitivityConfig
from .families import (DEFAULT_CORRECTION, DEFAULT_EQUIVALENCE_MARGIN, check_reference, default_comparisons,
    parse_comparisons, parse_correction, parse_margin)
from .sweep import DEFAULT_LR_SELECTION, parse_selection, parse_sweep, resolve_sweep

RECIPE_KEYS = ("teacher", "student", "seed_data", "train_data", "val_data", "test_data", "train", "seeds",
               "baseline", "budget_minutes", "arms", "comparisons", "equivalence_margin", "correction",
               "lr_selection", "test_limit", "val_limit")
LIMIT_KEYS = ("test_limit", "val_limit")  # items scored: the first N of test_data / val_data (null: all)
ARM_KEYS = ("name", "init", "lr_sweep", "extract", "train", "reference", "distill")
DISTILL_KEYS = ("kind", "weight", "temperature", "teacher")  # an arm's `distill` (paraknow.runs.distill)
DISTILL_LABELS = {"logits": "logit KD", "sequences": "sequence KD"}
# keys that change only how the cells are analysed: a study resumed with other values re-analyses its cells
ANALYSIS_KEYS = ("budget_minutes", "comparisons", "equivalence_margin", "correction", "lr_selection")
STUDY_TRAIN_KEYS = ("lr_sweep",)  # the recipe's `train` beside TrainConfig's fields: a sweep for every trained arm
INIT_LABELS = {**{name: init.label for name, init in INITS.items()}, "pkt": "PKT",
               "untuned": "the untuned student", "teacher": "the teacher"}
TRAINED_INITS = (*INITS, "pkt")  # the others are controls: evaluated once, never trained
# the export's controls (paraknow.transfer.controls) and `random`: the teacher's architecture with random
# weights, drawn per seed (exports.random_teacher)
RANDOM_WEIGHTS = "random"
TEACHER_WEIGHTS = (*BLOCK_WEIGHTS, RANDOM_WEIGHTS)
STUDY_EXTRACT_KEYS = ("teacher", "teacher_weights")
DEFAULT_SEEDS = [0, 1, 2]
DEFAULT_BUDGET_MINUTES = 120
# TrainConfig fields the study sets itself for every cell (the recipe cannot override them)
CELL_TRAIN_FIELDS = ("student", "data", "out", "init", "eval_data", "seed", "group", "label",
                     "distill", "distill_teacher", "distill_weight", "temperature")  # the last four: the arm's `distill`
# TransferConfig / SensitivityConfig fields that are not `extract` options in a recipe
HIDDEN_EXTRACT_FIELDS = ("manual_map", "overrides", "batch_size")
# the factors of the paper's analyses an arm's `extract` can vary (the Study page's grid builder and
# the results' grouping read these labels); an arm with no `extract` is one of the methods
FACTOR_LABELS = {"layers": "Layer selection", "modules": "Origin (modules)", "structure": "Structure",
                 "samples": "Seed samples", "rank": "Rank", "mode": "Injection mode", "teacher": "Teacher",
                 "teacher_weights": "Teacher weights"}
CONTROLS_GROUP, METHODS_GROUP, CROSSED_GROUP, OTHER_GROUP = "Controls", "Methods", "Crossed", "Other options"
ARM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


def train_keys() -> list[str]:
    return [f.name for f in fields(TrainConfig) if f.name not in CELL_TRAIN_FIELDS]


def _config_fields(cls) -> dict:
    return {f.name: f for f in fields(cls) if f.name not in HIDDEN_EXTRACT_FIELDS}


def extract_keys() -> list[str]:
    return sorted({*_config_fields(TransferConfig), *_config_fields(SensitivityConfig), *STUDY_EXTRACT_KEYS})


@dataclass
class Arm:
    name: str
    init: str  # an entry of paraknow.runs.inits.INITS | pkt | untuned | teacher
    lr_sweep: list[float] | None = None  # parse_recipe resolves `true` (the default sweep) to its rates
    extract: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    reference: str | None = None  # the arm a factor-level arm is compared with (families.py)
    distill: dict = field(default_factory=dict)  # {"kind", "weight", "temperature", "teacher"}: also learn from outputs

    @property
    def trained(self) -> bool:
        return self.init in TRAINED_INITS

    @property
    def factor(self) -> str:
        """The analysis the arm belongs to: Controls (untuned, teacher), Methods (vanilla, PiSSA,
        PKT as extracted by default), the label of the one factor its `extract` changes, Crossed
        (several factors) or Other options (a setting that is not one of the factors)."""
        if not self.trained:
            return CONTROLS_GROUP
        keys = set(self.extract)
        if not keys:
            return METHODS_GROUP
        if len(keys) > 1:
            return CROSSED_GROUP if len(keys & set(FACTOR_LABELS)) > 1 else OTHER_GROUP
        return FACTOR_LABELS.get(keys.pop(), OTHER_GROUP)

    def label(self) -> str:
        """How a verdict names this arm, e.g. "best-lr vanilla LoRA (vanilla)"."""
        text = ("best-lr " if self.lr_sweep else "") + INIT_LABELS[self.init] + \
            (f" + {DISTILL_LABELS[self.distill['kind']]}" if self.distill else "")
        return text if self.name == self.init else f"{text} ({self.name})"

    def to_dict(self) -> dict:
        out = {"name": self.name, "init": self.init}
        if self.lr_sweep:
            out["lr_sweep"] = list(self.lr_sweep)
        if self.extract:
            out["extract"] = dict(self.extract)
        if self.train:
            out["train"] = dict(self.train)
        if self.reference:
            out["reference"] = self.reference
        if self.distill:
            out["distill"] = dict(self.distill)
        return out


@dataclass
class Recipe:
    student: str
    train_data: str
    val_data: str
    test_data: str
    arms: list[Arm]
    teacher: str | None = None
    seed_data: str | None = None
    train: dict = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    baseline: str = ""
    budget_minutes: float = DEFAULT_BUDGET_MINUTES
    comparisons: dict = field(default_factory=dict)  # {family: [[arm, reference], ...]}, defaults filled in
    equivalence_margin: float = DEFAULT_EQUIVALENCE_MARGIN
    correction: str = DEFAULT_CORRECTION
    lr_selection: str = DEFAULT_LR_SELECTION
    test_limit: int | None = None  # test items scored per cell (the first N; None: all)
    val_limit: int | None = None  # validation items scored per cell (None: all, or train.eval_limit)

    def to_dict(self) -> dict:
        """The recipe as run: every key, defaults filled in (DIR/recipe.json)."""
        return {"teacher": self.teacher, "student": self.student, "seed_data": self.seed_data,
                "train_data": self.train_data, "val_data": self.val_data, "test_data": self.test_data,
                "train": dict(self.train), "seeds": list(self.seeds), "baseline": self.baseline,
                "budget_minutes": self.budget_minutes, "arms": [a.to_dict() for a in self.arms],
                "comparisons": {k: [list(p) for p in v] for k, v in self.comparisons.items()},
                "equivalence_margin": self.equivalence_margin, "correction": self.correction,
                "lr_selection": self.lr_selection, "test_limit": self.test_limit, "val_limit": self.val_limit}

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    def train_settings(self, arm: Arm) -> dict:
        """TrainConfig settings of an arm: the recipe's `train`, then the arm's overrides."""
        return {**self.train, **arm.train}

    def teacher_of(self, arm: Arm) -> str:
        return arm.extract.get("teacher") or self.teacher

    def pkt_teacher(self) -> str | None:
        """The teacher of the study's PKT arms (the recipe's; the first PKT arm's own otherwise);
        None for a study without PKT arms."""
        pkt = [arm for arm in self.arms if arm.init == "pkt"]
        return None if not pkt else (self.teacher or self.teacher_of(pkt[0]))

    def distill_settings(self, arm: Arm) -> dict:
        """The TrainConfig settings of an arm's `distill` (the teacher defaults to the recipe's)."""
        if not arm.distill:
            return {}
        given = {"distill_weight": arm.distill.get("weight"), "temperature": arm.distill.get("temperature")}
        return {"distill": arm.distill["kind"], "distill_teacher": arm.distill.get("teacher") or self.teacher,
                **{k: v for k, v in given.items() if v is not None}}

    def random_teacher(self, arm: Arm) -> bool:
        return arm.extract.get("teacher_weights") == RANDOM_WEIGHTS

    def transfer_config(self, arm: Arm, seed: int) -> TransferConfig:
        """The arm's extraction for one seed. Rank and alpha default to the training rank and
        alpha (so PKT trains as many parameters as vanilla LoRA); the extraction seed (random
        layers and positions) defaults to the cell's seed."""

        settings = self.train_settings(arm)
        given = {k: v for k, v in arm.extract.items() if k in _config_fields(TransferConfig)}
        for key in ("rank", "alpha"):
            if key not in given and settings.get(key) is not None:
                given[key] = settings[key]
        given.setdefault("seed", seed)
        if given.get("teacher_weights") == RANDOM_WEIGHTS:  # the teacher itself is random; its blocks move as they are
            given.pop("teacher_weights")
        return TransferConfig.from_dict(given)

    def sensitivity_config(self, arm: Arm) -> SensitivityConfig:
        return SensitivityConfig(**{k: v for k, v in arm.extract.items() if k in _config_fields(SensitivityConfig)})


# ---------------------------------------------------------------------------------------
# Parsing


def _fail(path: str, message: str) -> None:
    raise ParaknowError(f"recipe {path}: {message}")


def _check_keys(obj, path: str, allowed) -> dict:
    if not isinstance(obj, dict):
        _fail(path or "(top level)", f"must be an object with keys {', '.join(allowed)}.")
    normal = {}
    for key, value in obj.items():
        name = str(key).replace("-", "_")
        if name not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise ParaknowError(f"unknown key {where} in the recipe; allowed there: {', '.join(allowed)}.")
        normal[name] = value
    return normal


def _typed(obj: dict, path: str, owners: dict) -> dict:
    """Each value fits its settings field's type (paraknow.core.options.hint_of, checked by
    paraknow.core.validate: the same check as the app's recipe and a run's spec)."""
    for key, owner in owners.items():
        if key in obj and (problem := value_problem(obj[key], hint_of(owner, key))):
            _fail(f"{path}.{key}", problem + ".")
    return obj


def _parse_train(obj, path: str, extra: tuple = ()) -> dict:
    """A `train` block: known keys, of the right types, each value checked as `train` checks it."""
    settings = _check_keys(obj, path, [*train_keys(), *extra])
    if "lr_sweep" in settings:
        settings["lr_sweep"] = parse_sweep(settings["lr_sweep"], f"{path}.lr_sweep")
    settings = _typed(settings, path, {f.name: TrainConfig for f in fields(TrainConfig)})
    checked = {k: v for k, v in settings.items() if k != "lr_sweep"}
    try:
        TrainConfig(student="-", data="-", **checked).check_numbers()
    except ParaknowError as exc:
        _fail(path, str(exc))
    return settings


def _parse_extract(obj, path: str) -> dict:
    from ..transfer.mapping import parse_layers_arg

    extract = _check_keys(obj, path, extract_keys())
    transfer = _config_fields(TransferConfig)
    _typed(extract, path, {**{k: TransferConfig for k in transfer},
                           **{k: SensitivityConfig for k in _config_fields(SensitivityConfig)}})
    for key, value in extract.items():
        try:
            if key == "layers":
                parse_layers_arg(value)
            elif key == "teacher":
                if not isinstance(value, str) or not value.strip():
                    raise ParaknowError("must be a model reference (demo:teacher, a directory, ...).")
            elif key == "teacher_weights":
                if value not in TEACHER_WEIGHTS:
                    raise ParaknowError(f"{value!r} is not one of {', '.join(TEACHER_WEIGHTS)}.")
            elif key in transfer:  # each option alone, so the error names its key
                TransferConfig.from_dict({key: value}).validate()
            else:
                SensitivityConfig(**{key: value}).validate()
        except ParaknowError as exc:
            _fail(f"{path}.{key}", str(exc))
    return extract


def cells_part(recipe_dict: dict) -> dict:
    """A recipe as run (to_dict, or recipe.json read back) without what only changes the analysis:
    two recipes whose cells_part are equal run the same cells."""
    out = {k: v for k, v in recipe_dict.items() if k not in ANALYSIS_KEYS}
    out["arms"] = [{k: v for k, v in arm.items() if k != "reference"} for arm in recipe_dict.get("arms") or []]
    return out


def _parse_distill(obj, path: str) -> dict:
    from ..core.validate import check_number
    from ..runs.train_config import DISTILL_KINDS

    distill = _check_keys(obj, path, DISTILL_KEYS)
    if distill.get("kind") not in DISTILL_KINDS:
        _fail(f"{path}.kind", f"{distill.get('kind')!r} is not one of {', '.join(DISTILL_KINDS)}.")
    for key, bounds in (("weight", {"minimum": 0, "maximum": 1}), ("temperature", {"above": 0})):
        if key in distill:
            check_number(f"recipe {path}.{key}", distill[key], **bounds)
    if "teacher" in distill and (not isinstance(distill["teacher"], str) or not distill["teacher"].strip()):
        _fail(f"{path}.teacher", "must be a model reference (demo:teacher, a directory, ...).")
    return distill


def _parse_arm(obj, i: int) -> Arm:
    path = f"arms[{i}]"
    data = _check_keys(obj, path, ARM_KEYS)
    name, init = data.get("name"), data.get("init")
    if not isinstance(name, str) or not ARM_NAME_RE.match(name):
        _fail(f"{path}.name", "every arm needs a name of letters, digits and . _ + - (it names its folders).")
    if init not in INIT_LABELS:
        _fail(f"{path}.init", f"{init!r} is not one of {', '.join(INIT_LABELS)}.")
    arm = Arm(name=name, init=init)
    if "lr_sweep" in data:
        if init not in TRAINED_INITS:
            _fail(f"{path}.lr_sweep", f"the {init} control is not trained; only {', '.join(TRAINED_INITS)} arms sweep.")
        arm.lr_sweep = parse_sweep(data["lr_sweep"], f"{path}.lr_sweep")
    if "extract" in data:
        if init != "pkt":
            _fail(f"{path}.extract", "only pkt arms extract from a teacher.")
        arm.extract = _parse_extract(data["extract"], f"{path}.extract")
    if "distill" in data:
        if init not in TRAINED_INITS:
            _fail(f"{path}.distill", f"the {init} control is not trained; only trained arms distil.")
        arm.distill = _parse_distill(data["distill"], f"{path}.distill")
    if "train" in data:
        arm.train = _parse_train(data["train"], f"{path}.train")
        if isinstance(arm.lr_sweep, list) and "lr" in arm.train:
            _fail(f"{path}.train.lr", "the arm sweeps lr_sweep; drop its fixed lr (lr_sweep: true centres the "
                                      "default sweep on it).")
    return arm


def _resolve_sweeps(arms: list[Arm], train: dict) -> None:
    """Every trained arm's own sweep, or the recipe's `train.lr_sweep` (taken out of `train`), as the
    list of rates it runs; `true` becomes the default sweep centred on the arm's rate (its own `lr`,
    else the recipe's)."""
    shared = train.pop("lr_sweep", None)
    for i, arm in enumerate(arms):
        if not arm.trained:
            continue
        if arm.lr_sweep is None and isinstance(shared, list) and "lr" in arm.train:
            _fail(f"arms[{i}].train.lr", "train.lr_sweep sweeps every trained arm; drop the arm's fixed lr, or "
                                         "give the arm its own lr_sweep (a list of one rate keeps it fixed).")
        centre = float({**train, **arm.train}.get("lr", default_of(TrainConfig, "lr")))
        arm.lr_sweep = resolve_sweep(shared if arm.lr_sweep is None else arm.lr_sweep, centre)
        if arm.lr_sweep:
            arm.train.pop("lr", None)  # the centre of its sweep, which now lists the rates


def _check_limits(data: dict) -> None:
    for key in LIMIT_KEYS:
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            _fail(key, "must be a positive number of items, or null for all of them.")
    trains = [("train", data.get("train"))] + [(f"arms[{i}].train", a.get("train"))
                                              for i, a in enumerate(data.get("arms") or []) if isinstance(a, dict)]
    sets_eval = [path for path, train in trains if isinstance(train, dict) and "eval_limit" in train]
    if data.get("val_limit") is not None and sets_eval:
        _fail("val_limit", f"and {sets_eval[0]}.eval_limit both limit the validation items: keep val_limit.")


def parse_recipe(data) -> Recipe:
    """A Recipe from the parsed file (a dict); raises ParaknowError naming the bad key."""
    data = _check_keys(data, "", RECIPE_KEYS)
    for key in ("student", "train_data", "val_data", "test_data"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            _fail(key, "is required (a model reference or a dataset such as task:arith:test).")
    for key in ("teacher", "seed_data", "baseline"):
        if data.get(key) is not None and (not isinstance(data[key], str) or not data[key].strip()):
            _fail(key, "must be a non-empty string (or left out).")
    arms_data = data.get("arms")
    if not isinstance(arms_data, list) or not arms_data:
        _fail("arms", "must be a non-empty list of arms ({\"name\": ..., \"init\": ...}).")
    arms = [_parse_arm(a, i) for i, a in enumerate(arms_data)]
    names = [a.name for a in arms]
    for i, name in enumerate(names):
        if name in names[:i]:
            _fail(f"arms[{i}].name", f"'{name}' names two arms; arm names must be unique.")
    seeds = data.get("seeds", list(DEFAULT_SEEDS))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        _fail("seeds", "must be a non-empty list of integers, e.g. [0, 1, 2].")
    if len(set(seeds)) != len(seeds):
        _fail("seeds", "lists a seed twice.")
    budget = data.get("budget_minutes", DEFAULT_BUDGET_MINUTES)
    try:
        for seed in seeds:
            check_seed(seed)
        check_number("budget_minutes", budget, above=0)
    except ParaknowError as exc:
        _fail("seeds" if "seed" in str(exc) else "budget_minutes", str(exc))
    _check_limits(data)
    baseline = data.get("baseline") or next((a.name for a in arms if a.init == "vanilla"), arms[0].name)
    if baseline not in names:
        _fail("baseline", f"'{baseline}' is not an arm; the arms are {', '.join(names)}.")
    for i, (arm, raw) in enumerate(zip(arms, arms_data)):
        if "reference" in raw:
            arm.reference = check_reference(raw["reference"], f"arms[{i}].reference", names, arm.name)
    train = _parse_train(data.get("train", {}), "train", STUDY_TRAIN_KEYS)
    _resolve_sweeps(arms, train)
    comparisons = {**default_comparisons(arms, baseline), **parse_comparisons(data.get("comparisons", {}), names)}
    recipe = Recipe(student=data["student"], train_data=data["train_data"], val_data=data["val_data"],
                    test_data=data["test_data"], arms=arms, teacher=data.get("teacher"),
                    seed_data=data.get("seed_data"), train=train,
                    seeds=list(seeds), baseline=baseline, budget_minutes=budget, comparisons=comparisons,
                    equivalence_margin=parse_margin(data.get("equivalence_margin", DEFAULT_EQUIVALENCE_MARGIN)),
                    correction=parse_correction(data.get("correction", DEFAULT_CORRECTION)),
                    lr_selection=parse_selection(data.get("lr_selection", DEFAULT_LR_SELECTION)),
                    test_limit=data.get("test_limit"), val_limit=data.get("val_limit"))
    for i, arm in enumerate(arms):
        needs = (["teacher"] if (arm.init in ("pkt", "teacher") and not arm.extract.get("teacher")) or
                 (arm.distill and not arm.distill.get("teacher")) else []) + \
            (["seed_data"] if arm.init == "pkt" else [])
        for key in needs:
            if not getattr(recipe, key):
                _fail(key, f"is required by arms[{i}] ({arm.name}, init {arm.init}).")
    return recipe


def _yaml_loader():
    """yaml.SafeLoader that also reads 1e-4 as a number (YAML 1.1 wants 1.0e-4; JSON and people
    write learning rates the short way)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))
    return Loader


def recipe_from_text(text: str, source: str = "the recipe", yaml_format: bool | None = None) -> Recipe:
    """A Recipe from JSON or YAML text (`yaml_format` None: JSON when the text starts with `{`)."""
    if yaml_format is None:
        yaml_format = not text.lstrip().startswith("{")
    if yaml_format:
        import yaml

        try:
            data = yaml.load(text, Loader=_yaml_loader())  # a SafeLoader: no Python objects
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ParaknowError(f"{source} is not valid YAML{where}: {first_line(exc)}") from None
        except RecursionError:
            raise ParaknowError(f"{source} is nested deeper than a recipe can be: it is not a study recipe.") from None
    else:
        data = recipe_json(text, source)
    return parse_recipe(data)


def load_recipe(path) -> Recipe:
    """Read a recipe file: YAML for .yaml/.yml, JSON otherwise (read as `extract --recipe` reads its
    file: a binary or non-UTF-8 file is named, not a traceback)."""
    path = Path(path).expanduser()
    return recipe_from_text(read_recipe_text(path), str(path), path.suffix.lower() in (".yaml", ".yml"))
