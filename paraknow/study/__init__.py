"""Studies: controlled experiments that answer "does the transfer help here, and which extraction?".

A recipe (recipe.py) names a teacher/student pair, data splits, a base training config, arms and
seeds; the runner (runner.py) runs every cell extract -> train -> evaluate into a directory,
resumably; results.py turns the cells into per-arm means with 95 % intervals, paired differences
against the baseline and verdicts; report.py writes results.json/.csv and report.html.
docs/study.md describes all of it.
"""
from .recipe import Arm, Recipe, load_recipe, parse_recipe, recipe_from_text
from .report import format_table, write_outputs
from .runner import prepare, run_study

__all__ = ["Arm", "Recipe", "load_recipe", "parse_recipe", "recipe_from_text", "run_study", "prepare", "format_table",
           "write_outputs"]
