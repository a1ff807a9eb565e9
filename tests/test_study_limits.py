"""Study recipes' `test_limit` and `val_limit`: the items scored per cell (default all of them)."""
import pytest
from study_fixtures import study_inputs, tiny_recipe

from paraknow.core.errors import ParaknowError
from paraknow.study import parse_recipe, run_study
from paraknow.study.plan import check_recipe, train_config

BASE = {"teacher": "demo:teacher", "student": "demo:student", "seed_data": "task:arith:seed",
        "train_data": "task:arith:train", "val_data": "task:arith:val", "test_data": "task:arith:test",
        "arms": [{"name": "vanilla", "init": "vanilla"}, {"name": "pkt", "init": "pkt"}]}


def _eval_limit(**changes) -> int | None:
    recipe = parse_recipe({**BASE, **changes})
    return train_config(recipe, recipe.arm("vanilla"), 0, None, "vanilla").eval_limit


def test_limits_default_to_all_and_round_trip():
    recipe = parse_recipe(dict(BASE))
    assert (recipe.test_limit, recipe.val_limit) == (None, None)
    assert _eval_limit() is None  # validation on every item
    assert _eval_limit(val_limit=50) == 50
    assert _eval_limit(train={"eval_limit": 7}) == 7  # the older key still works alone
    again = parse_recipe(parse_recipe({**BASE, "test_limit": 200, "val_limit": 100}).to_dict())
    assert (again.test_limit, again.val_limit) == (200, 100)


@pytest.mark.parametrize("changes, reason", [
    ({"test_limit": 0}, "test_limit: must be a positive number"),
    ({"val_limit": "all"}, "val_limit: must be a positive number"),
    ({"val_limit": True}, "val_limit: must be a positive number"),
    ({"val_limit": 10, "train": {"eval_limit": 20}}, "train.eval_limit both limit"),
])
def test_bad_limits_name_the_key(changes, reason):
    with pytest.raises(ParaknowError, match=reason):
        parse_recipe({**BASE, **changes})


def test_a_limited_study_scores_the_first_items(tmp_path):
    paths = study_inputs(tmp_path / "inputs")  # 4 test records, 3 validation records
    arms = [{"name": "vanilla", "init": "vanilla"}, {"name": "untuned", "init": "untuned"}]
    recipe = parse_recipe(tiny_recipe(paths, seeds=[0], test_limit=2, val_limit=1, arms=arms))
    sizes = check_recipe(recipe)
    assert (sizes.test, sizes.val) == (2, 1)
    cells = {c["arm"]: c for c in run_study(recipe, tmp_path / "study")["cells"]}
    assert all(c["state"] == "finished" and c["test_n"] == 2 for c in cells.values())
    assert cells["vanilla"]["val_n"] == 1
    full = parse_recipe(tiny_recipe(paths, seeds=[0], arms=arms[1:]))
    assert run_study(full, tmp_path / "full")["cells"][0]["test_n"] == 4


def test_the_quick_example_is_the_page_preset():
    from pathlib import Path

    from paraknow.study import load_recipe
    from ui.study import QUICK_PRESET

    recipe = load_recipe(Path(__file__).resolve().parent.parent / "docs" / "examples" / "study-quick.json")
    assert len(recipe.seeds) == QUICK_PRESET["seeds"] and [a.name for a in recipe.arms] == QUICK_PRESET["controls"]
    assert (recipe.test_limit, recipe.val_limit) == (QUICK_PRESET["test_limit"], QUICK_PRESET["val_limit"])
    assert recipe.budget_minutes == QUICK_PRESET["budget_minutes"]
    assert recipe.arm("vanilla").train["lr"] == float(QUICK_PRESET["sweep"])
    assert recipe.train["epochs"] == QUICK_PRESET["epochs"]


def test_the_shipped_recipes_and_the_pages_builder_train_at_the_micro_batch_bench_cell_measured():
    """docs/examples/*.json and the Study page's builder (its quick preset keeps it) use the micro-batch of
    docs/results/bench_cell.json, where a cell is within its target of a plain loop."""
    import json
    from pathlib import Path

    from paraknow.study import load_recipe
    from ui.state import W_ST_MICRO, study_defaults

    root = Path(__file__).resolve().parent.parent
    measured = json.loads((root / "docs" / "results" / "bench_cell.json").read_text())["micro_batch"]
    recipes = sorted((root / "docs" / "examples").glob("study-*.json"))
    assert len(recipes) >= 3 and study_defaults()[W_ST_MICRO] == measured
    for path in recipes:
        recipe = load_recipe(path)
        assert recipe.train.get("micro_batch") == measured, path.name  # set in the file, not left to a default
        if not all(str(ref).startswith("demo:") for ref in (recipe.teacher, recipe.student)):
            continue  # resolving its cells needs the real models (an optional extra): the file's key is checked
        for arm in recipe.arms:
            if arm.trained:
                assert train_config(recipe, arm, 0, None, "vanilla").micro_batch == measured, (path.name, arm.name)
