"""The real pair's GPU study recipe (docs/examples/study-qwen-gsm8k.json) parses and holds the arms, seeds and
data that docs/real-pair.md promises; nothing here loads the models or needs the GSM8K files."""
from pathlib import Path

from paraknow.study import load_recipe
from paraknow.study.plan import plan_cells

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "docs" / "examples" / "study-qwen-gsm8k.json"


def test_qwen_gsm8k_recipe_holds_the_promised_arms():
    recipe = load_recipe(RECIPE)
    assert (recipe.teacher, recipe.student) == ("bundled:qwen2.5-coder-1.5b-instruct",
                                                "bundled:qwen2.5-coder-0.5b-instruct")
    arms = {a.name: a for a in recipe.arms}
    assert len(arms["vanilla"].lr_sweep) >= 3 and recipe.baseline == "vanilla"
    assert {a.init for a in recipe.arms} == {"untuned", "teacher", "vanilla", "pissa", "pkt"}
    assert [a.extract.get("teacher_weights") for a in recipe.arms if a.init == "pkt"] == [None, "spectrum"]
    assert [a.distill["kind"] for a in recipe.arms if a.distill] == ["logits"]
    assert len(recipe.seeds) == 3 and recipe.test_limit is None  # the whole test file is scored
    assert ["pkt", "pkt-spectrum"] in recipe.comparisons["primary"]
    # controls once, every trained arm per seed, the vanilla sweep per rate
    trained = sum(len(a.lr_sweep or [None]) for a in recipe.arms if a.trained)
    assert len(plan_cells(recipe)) == 2 + len(recipe.seeds) * trained


def test_qwen_gsm8k_recipe_data_are_the_users_files_named_in_the_doc():
    recipe = load_recipe(RECIPE)
    doc = (ROOT / "docs" / "real-pair.md").read_text()
    for path in (recipe.seed_data, recipe.train_data, recipe.val_data, recipe.test_data):
        assert path.endswith(".jsonl") and not path.startswith("task:")  # GSM8K is never shipped
        assert f"`{path}`" in doc, f"docs/real-pair.md does not say how to make {path}"
    assert "docs/examples/study-qwen-gsm8k.json" in doc
