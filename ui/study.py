"""Study page helpers: the grid builder's choices and its recipe, the studies on disk, table rows.

Studies live under cache/studies/<name>/ (paraknow.study.control runs them in the background), so
the page reads them back on every rerun. Everything here works without a Streamlit session.
"""
from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

from paraknow.core.errors import ParaknowError
from paraknow.core.paths import cache_dir

SWEEP_DEFAULT = "1e-4, 3e-4, 1e-3"
# one click each: the controls a study needs to be read honestly
CONTROLS = {
    "vanilla": ({"init": "vanilla"}, "vanilla LoRA with the learning-rate sweep (the usual baseline)"),
    "pissa": ({"init": "pissa"}, "PiSSA with the same sweep"),
    "pkt": ({"init": "pkt"}, "PKT with the default extraction (the paper's)"),
    "pkt-random-positions": ({"init": "pkt", "extract": {"structure": "random"}},
                             "PKT from random block positions of the same size"),
    "pkt-random-teacher": ({"init": "pkt", "extract": {"teacher_weights": "random"}},
                           "PKT from a teacher of the same architecture with random weights (drawn per seed)"),
    "pkt-spectrum": ({"init": "pkt", "extract": {"teacher_weights": "spectrum"}},
                     "PKT's blocks' singular values with random directions"),
    "pkt-shuffled": ({"init": "pkt", "extract": {"teacher_weights": "shuffled"}},
                     "PKT's blocks with their rows and columns permuted"),
    "vanilla-ortho": ({"init": "vanilla-ortho"}, "vanilla LoRA with orthonormal A rows as PKT's (init scale), "
                                                 "with the sweep"),
    "untuned": ({"init": "untuned"}, "the student as it is (no training)"),
    "teacher": ({"init": "teacher"}, "the teacher (no training)"),
}
SWEPT = ("vanilla", "pissa", "vanilla-ortho")
DEFAULT_CONTROLS = ["vanilla", "pissa", "pkt", "pkt-random-positions", "untuned", "teacher"]
# the "quick" preset (docs/study.md): one seed, vanilla vs PKT at one learning rate, 200 items scored
QUICK_PRESET = {"seeds": 1, "controls": ["vanilla", "pkt"], "sweep": "3e-4", "epochs": 1.0, "val_limit": 200,
                "test_limit": 200, "budget_minutes": 15.0}  # 1 epoch, 16 steps: docs/study.md has its measured times
SAMPLE_LEVELS = [1, 2, 4, 8, 16, 64]
RANK_LEVELS = [4, 8, 32, 64]


def _transfer_defaults() -> dict:
    from paraknow.transfer.plan import TransferConfig

    return {f.name: f.default for f in fields(TransferConfig)}


def factor_levels() -> dict[str, list]:
    """Each factor a PKT arm can vary, with its levels other than the default (which the `pkt`
    control has), read from the registries."""
    from paraknow.core.architecture import EMBED_ROLES, LAYER_ROLES, MODULE_GROUPS
    from paraknow.extract import STRUCTURES
    from paraknow.transfer.lora import MODES
    from paraknow.transfer.mapping import LAYER_STRATEGIES
    from paraknow.transfer.sensitivity import SensitivityConfig

    d = _transfer_defaults()
    samples = SensitivityConfig().samples
    return {"layers": [s for s in LAYER_STRATEGIES if s not in ("manual", d["layers"])],
            "modules": [*MODULE_GROUPS, ",".join(MODULE_GROUPS), *LAYER_ROLES, *EMBED_ROLES],
            "structure": [s for s in STRUCTURES if s != d["structure"]],
            "samples": [n for n in SAMPLE_LEVELS if n != samples],
            "rank": [r for r in RANK_LEVELS if r != d["rank"]],
            "mode": [m for m in MODES if m != d["mode"]]}


def parse_rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in re.split(r"[,\s]+", text.strip()) if x]
    except ValueError:
        raise ParaknowError(f"learning rates must be numbers separated by commas (got '{text}').") from None
    if not rates:
        raise ParaknowError("give at least one learning rate, e.g. 1e-4, 3e-4, 1e-3.")
    return rates


def build_recipe(teacher: str, student: str, task: str, train: dict, n_seeds: int, sweep: list[float],
                 controls: list[str], factors: dict[str, list], baseline: str | None,
                 budget_minutes: float, val_limit: int | None = None, test_limit: int | None = None) -> dict:
    """The grid as a recipe: the chosen controls, then one PKT arm per chosen factor level (one
    factor at a time, everything else at the default: an ablation)."""
    arms = []
    for name in controls:
        arm, _ = CONTROLS[name]
        arms.append({"name": name, **json.loads(json.dumps(arm)),
                     **({"lr_sweep": list(sweep)} if name in SWEPT and len(sweep) > 1 else {})})
        if name in SWEPT and len(sweep) == 1:
            arms[-1]["train"] = {"lr": sweep[0]}
    for factor, levels in factors.items():
        for level in levels:
            arms.append({"name": f"pkt-{factor}-{str(level).replace(',', '+')}", "init": "pkt",
                         "extract": {factor: level}})
    names = [a["name"] for a in arms]
    recipe = {"teacher": teacher, "student": student, "seed_data": f"task:{task}:seed",
              "train_data": f"task:{task}:train", "val_data": f"task:{task}:val", "test_data": f"task:{task}:test",
              "train": dict(train), "seeds": list(range(n_seeds)), "budget_minutes": budget_minutes,
              "val_limit": val_limit, "test_limit": test_limit, "arms": arms}
    if baseline in names:
        recipe["baseline"] = baseline
    return recipe


def studies_root() -> Path:
    return cache_dir("studies")


def list_studies() -> list[str]:
    """Names of the studies under cache/studies/, newest first."""
    from paraknow.study.cells import RECIPE_FILE

    found = [p for p in studies_root().iterdir() if (p / RECIPE_FILE).is_file()]
    return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def new_study_dir(name: str) -> Path:
    name = name.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise ParaknowError("name the study with letters, digits and . _ - (it names its folder).")
    path = studies_root() / name
    if path.exists():
        raise ParaknowError(f"a study named '{name}' exists already: pick it below to resume it, or choose "
                            "another name.")
    return path


def running_progress(out: Path, cell_ids: list[str]) -> list[tuple[str, str, float]]:
    """(cell id, `phase k/n`, fraction done) of each running cell, from its progress.jsonl
    (paraknow.study.progress; a cell that has reported nothing yet reads `starting`)."""
    from paraknow.core.jobdir import last_progress
    from paraknow.study.cells import CELLS_DIR
    from paraknow.study.progress import progress_text

    rows = []
    for cell_id in cell_ids:
        folder = Path(out) / CELLS_DIR / cell_id
        row = last_progress(folder)
        rows.append((cell_id, progress_text(folder) or "starting", row["done"] / row["total"] if row else 0.0))
    return rows


def with_budget(recipe, minutes: float):
    """The recipe with another budget (to resume a study its budget stopped)."""
    from paraknow.study import parse_recipe

    return parse_recipe({**recipe.to_dict(), "budget_minutes": minutes})


def cell_rows(results: dict) -> list[dict]:
    """One display row per cell (percentages as text)."""
    def pct(x):
        return "–" if x is None else f"{100 * x:.1f}"

    return [{"arm": c["arm"], "seed": "–" if c["seed"] is None else c["seed"],
             "lr": "–" if c["lr"] is None else f"{c['lr']:g}", "state": c["state"],
             "val %": pct(c["val_accuracy"]), "test %": pct(c["test_accuracy"]),
             "chosen": "✓" if c.get("selected") and c["lr"] is not None else "",
             "seconds": "–" if c["seconds"] is None else f"{c['seconds']:.0f}",
             "error": c.get("error") or ""} for c in results["cells"]]


def signal_rows(results: dict) -> list[dict]:
    """The signals table: one row per PKT arm and their Spearman correlation with accuracy; readable
    column names (SIGNAL_LABELS) and "–" where a value does not exist."""
    from paraknow.study.signals import SIGNAL_LABELS, SIGNALS

    def shown(value, digits: int):
        return "–" if value is None else f"{value:.{digits}f}"

    rows = [{"arm": a["arm"], **{SIGNAL_LABELS[s]: shown(a["signals"].get(s), 4) for s in SIGNALS}}
            for a in results["arms"] if a["signals"]]
    corr = results["signal_correlations"]
    if rows:
        rows.append({"arm": "Spearman vs accuracy", **{SIGNAL_LABELS[s]: shown(corr[s]["spearman"], 3)
                                                       for s in SIGNALS}})
    return rows


def curve_series(out: Path, results: dict) -> list[dict]:
    """The selected cells' training metrics, for viz.run_curves (one line per arm and seed)."""
    from paraknow.runs.rundir import read_metrics

    return [{"label": f"{c['arm']} s{c['seed']}", "rows": read_metrics(Path(out) / c["run_dir"])}
            for c in results["cells"] if c.get("selected") and c.get("run_dir")]
