"""Study recipes: keys and levels checked against the registries, errors that name the key path,
pairs that cannot transfer refused before anything runs, and the CLI's exit 2."""
import json
import subprocess
import sys

import pytest
import yaml
from study_fixtures import TEACHER, save_model, study_inputs, tiny_recipe, write_recipe

from paraknow.core.errors import ParaknowError
from paraknow.extract import STRUCTURES
from paraknow.study import load_recipe, parse_recipe, prepare
from paraknow.study.recipe import extract_keys, train_keys
from paraknow.transfer.mapping import LAYER_STRATEGIES
from paraknow.transfer.sensitivity import METRICS

BASE = {"teacher": "demo:teacher", "student": "demo:student", "seed_data": "task:arith:seed",
        "train_data": "task:arith:train", "val_data": "task:arith:train", "test_data": "task:arith:test",
        "arms": [{"name": "vanilla", "init": "vanilla"}, {"name": "pkt", "init": "pkt"}]}


def recipe_with(**changes) -> dict:
    return json.loads(json.dumps({**BASE, **changes}))


def error_of(data) -> str:
    with pytest.raises(ParaknowError) as info:
        parse_recipe(data)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_and_normalised_keys():
    recipe = parse_recipe(recipe_with(train={"micro-batch": 4, "epochs": 2}))
    assert recipe.seeds == [0, 1, 2] and recipe.baseline == "vanilla" and recipe.budget_minutes == 120
    assert recipe.train == {"micro_batch": 4, "epochs": 2}
    assert recipe.to_dict()["arms"] == BASE["arms"]


@pytest.mark.parametrize("path,data", [
    ("structur", {**BASE, "structur": 1}),
    ("arms[1].extract.structur", recipe_with(arms=[BASE["arms"][0], {"name": "p", "init": "pkt",
                                                                     "extract": {"structur": "rowcol"}}])),
    ("arms[0].lr", recipe_with(arms=[{"name": "v", "init": "vanilla", "lr": 1e-3}])),
    ("train.lrate", recipe_with(train={"lrate": 1e-3})),
    ("arms[0].train.seed", recipe_with(arms=[{"name": "v", "init": "vanilla", "train": {"seed": 3}}])),
])
def test_unknown_key_names_its_path_and_the_allowed_keys(path, data):
    message = error_of(data)
    assert f"unknown key {path} " in message
    leaf = path.rsplit(".", 1)[0] if "." in path else ""
    allowed = {"": ["arms", "budget_minutes", "seed_data"], "arms[1].extract": extract_keys(),
               "arms[0]": ["lr_sweep", "extract"], "train": train_keys(), "arms[0].train": train_keys()}[leaf]
    assert all(key in message for key in allowed)


def test_extract_keys_come_from_the_config_dataclasses():
    keys = extract_keys()
    for key in ("layers", "structure", "modules", "rank", "alpha", "mode", "split", "seed", "metric", "samples",
                "teacher", "teacher_weights"):
        assert key in keys
    assert "manual_map" not in keys and "overrides" not in keys
    assert "lr" in train_keys() and "student" not in train_keys() and "seed" not in train_keys()


@pytest.mark.parametrize("key,value,registry", [("structure", "blocks", STRUCTURES),
                                                ("layers", "sideways", LAYER_STRATEGIES),
                                                ("metric", "gradnorm", METRICS)])
def test_unknown_level_lists_the_registry(key, value, registry):
    message = error_of(recipe_with(arms=[{"name": "p", "init": "pkt", "extract": {key: value}}]))
    assert message.startswith(f"recipe arms[0].extract.{key}:")
    assert all(name in message for name in registry if name != "manual")


@pytest.mark.parametrize("arm,path", [
    ({"name": "u", "init": "untuned", "lr_sweep": [1e-3]}, "arms[0].lr_sweep"),
    ({"name": "v", "init": "vanilla", "extract": {"rank": 4}}, "arms[0].extract"),
    ({"name": "v", "init": "vanilla", "lr_sweep": [1e-3, 1e-3]}, "arms[0].lr_sweep"),
    ({"name": "v", "init": "vanilla", "lr_sweep": [-1]}, "arms[0].lr_sweep"),
    ({"name": "v", "init": "vanilla", "lr_sweep": [1e-3], "train": {"lr": 1e-4}}, "arms[0].train.lr"),
    ({"name": "v", "init": "lora"}, "arms[0].init"),
    ({"name": "a b", "init": "vanilla"}, "arms[0].name"),
    ({"name": "p", "init": "pkt", "extract": {"rank": "big"}}, "arms[0].extract.rank"),
    ({"name": "p", "init": "pkt", "extract": {"teacher_weights": "zeros"}}, "arms[0].extract.teacher_weights"),
    ({"name": "p", "init": "pkt", "extract": {"modules": "attn,mlp"}}, "arms[0].extract.modules"),
])
def test_bad_arm_values(arm, path):
    assert error_of(recipe_with(arms=[arm])).startswith(f"recipe {path}")


def test_lr_sweeps_for_every_arm_and_the_default_sweep():
    arms = [{"name": "vanilla", "init": "vanilla"}, {"name": "pissa", "init": "pissa", "train": {"lr": 2e-3}},
            {"name": "pkt", "init": "pkt", "lr_sweep": [1e-3]}, {"name": "untuned", "init": "untuned"}]
    recipe = parse_recipe(recipe_with(train={"lr": 1e-2, "lr_sweep": True}, arms=arms))
    sweeps = {a.name: a.lr_sweep for a in recipe.arms}
    assert sweeps["vanilla"] == [5e-3, 7.071e-3, 1e-2, 1.414e-2, 2e-2]  # centred on the recipe's rate
    assert sweeps["pissa"][2] == 2e-3 and len(sweeps["pissa"]) == 5  # centred on the arm's own rate
    assert sweeps["pkt"] == [1e-3] and sweeps["untuned"] is None  # its own sweep; a control is not trained
    assert "lr_sweep" not in recipe.train and recipe.lr_selection == "per-arm"
    assert parse_recipe(recipe.to_dict()).to_dict() == recipe.to_dict()  # recipe.json runs the same cells
    listed = parse_recipe(recipe_with(train={"lr_sweep": [1e-3, 3e-3]}, lr_selection="per-seed"))
    assert [a.lr_sweep for a in listed.arms] == [[1e-3, 3e-3]] * 2 and listed.lr_selection == "per-seed"
    own = parse_recipe(recipe_with(arms=[{"name": "v", "init": "vanilla", "lr_sweep": True, "train": {"lr": 1e-3}}]))
    assert own.arms[0].lr_sweep[2] == 1e-3


def test_bad_lr_sweep_and_selection_name_their_key():
    assert error_of(recipe_with(lr_selection="per-cell")).startswith("recipe lr_selection:")
    assert error_of(recipe_with(train={"lr_sweep": "yes"})).startswith("recipe train.lr_sweep:")
    clash = recipe_with(train={"lr_sweep": [1e-3, 3e-3]},
                        arms=[{"name": "v", "init": "vanilla", "train": {"lr": 1e-4}}])
    assert error_of(clash).startswith("recipe arms[0].train.lr:")
    assert "unknown key arms[0].train.lr_sweep" in error_of(
        recipe_with(arms=[{"name": "v", "init": "vanilla", "train": {"lr_sweep": True}}]))


def test_controls_parse_into_the_export_and_the_trainer():
    arms = [{"name": "vanilla", "init": "vanilla"}, {"name": "ortho", "init": "vanilla-ortho"},
            {"name": "pkt", "init": "pkt"}] + [
        {"name": f"pkt-{w}", "init": "pkt", "extract": {"teacher_weights": w}} for w in ("random", "spectrum", "shuffled")]
    recipe = parse_recipe(recipe_with(arms=arms))
    weights = {a.name: recipe.transfer_config(a, 7).teacher_weights for a in recipe.arms if a.init == "pkt"}
    # a random teacher's blocks move as they are; spectrum and shuffled are made from the trained teacher's
    assert weights == {"pkt": "trained", "pkt-random": "trained", "pkt-spectrum": "spectrum",
                       "pkt-shuffled": "shuffled"}
    assert [a.name for a in recipe.arms if recipe.random_teacher(a)] == ["pkt-random"]
    assert recipe.arm("ortho").trained
    assert [pair[0] for pair in recipe.comparisons["primary"]] == ["ortho", "pkt", "pkt-random", "pkt-spectrum",
                                                                  "pkt-shuffled"]


def test_bad_top_level_values():
    assert "seeds" in error_of(recipe_with(seeds=[0, 0]))
    assert "seeds" in error_of(recipe_with(seeds=[]))
    assert "baseline" in error_of(recipe_with(baseline="nope"))
    assert "budget_minutes" in error_of(recipe_with(budget_minutes=0))
    assert "two arms" in error_of(recipe_with(arms=[BASE["arms"][0], BASE["arms"][0]]))
    no_seed = recipe_with()
    del no_seed["seed_data"]
    assert "seed_data" in error_of(no_seed)


def test_yaml_and_json_recipes_are_the_same(tmp_path):
    data = recipe_with(train={"epochs": 2, "lr": 3e-4}, arms=[{"name": "v", "init": "vanilla",
                                                               "lr_sweep": [1e-4, 1e-3]}])
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "r.json").write_text(json.dumps(data))
    assert load_recipe(tmp_path / "r.yaml").to_dict() == load_recipe(tmp_path / "r.json").to_dict()
    (tmp_path / "short.yml").write_text(
        "student: demo:student\ntrain_data: task:arith:train\nval_data: task:arith:val\n"
        "test_data: task:arith:test\ntrain: {lr: 3e-4, epochs: 2}\n"
        "arms:\n  - {name: v, init: vanilla, lr_sweep: [1e-4, 1E-3, 3.0e-3]}\n")
    short = load_recipe(tmp_path / "short.yml")
    assert short.train == {"lr": 3e-4, "epochs": 2} and short.arms[0].lr_sweep == [1e-4, 1e-3, 3e-3]
    (tmp_path / "bad.yaml").write_text("arms: [\n  - name: v\n  init")
    with pytest.raises(ParaknowError, match="not valid YAML at line"):
        load_recipe(tmp_path / "bad.yaml")


@pytest.mark.parametrize("teacher_shape,modules,expected", [
    ({**TEACHER, "layers": 1}, "attn,ffn", "layers"),  # shallower than the student
    ({**TEACHER, "hidden": 48, "heads": 3, "kv_heads": 1}, "attn,ffn", "narrower"),
    ({**TEACHER, "vocab": 120}, "attn,ffn,embed", "embeddings requested but the vocabularies differ"),
])
def test_a_pair_that_cannot_transfer_is_refused_before_anything_runs(tmp_path, teacher_shape, modules, expected):
    paths = study_inputs(tmp_path / "in")
    paths["teacher"] = save_model(tmp_path / "bad_teacher", **teacher_shape)
    recipe = parse_recipe(tiny_recipe(paths, arms=[{"name": "pkt", "init": "pkt",
                                                    "extract": {"samples": 4, "modules": modules}}]))
    out = tmp_path / "study"
    with pytest.raises(ParaknowError, match=expected) as info:
        prepare(recipe, out)
    assert "pkt" in str(info.value) and not out.exists()


@pytest.mark.slow
def test_cli_unknown_key_exits_2_with_one_line_and_writes_nothing(tmp_path):
    paths = study_inputs(tmp_path / "in")
    recipe = tiny_recipe(paths)
    recipe["arms"][1]["extract"]["structur"] = "rowcol"
    out = tmp_path / "study"
    proc = subprocess.run([sys.executable, "-m", "paraknow", "study", "--recipe",
                           write_recipe(tmp_path / "r.json", recipe), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown key arms[1].extract.structur ")
    assert "structure" in lines[0] and proc.stdout == ""
    assert not out.exists()


def test_demo_example_recipe_parses_and_covers_the_registries():
    recipe = load_recipe("docs/examples/study-demo.json")
    pkt = [a for a in recipe.arms if a.init == "pkt"]
    structures = {a.extract.get("structure", "submatrix") for a in pkt}
    layers = {a.extract.get("layers", "sensitivity") for a in pkt}
    assert structures == set(STRUCTURES)
    assert layers == set(LAYER_STRATEGIES) - {"manual"}
    assert {a.extract.get("samples", 32) for a in pkt} >= {1, 4, 16, 32}
    assert {a.init for a in recipe.arms} == {"vanilla", "pissa", "pkt", "untuned", "teacher"}
    assert any(a.extract.get("teacher_weights") == "random" for a in pkt)
    assert all(len(a.lr_sweep) >= 3 for a in recipe.arms if a.init in ("vanilla", "pissa"))
    assert len(recipe.seeds) == 5 and recipe.baseline == "vanilla"


# hostile recipes: read and checked as `extract --recipe` reads its file, exit 2, one line, nothing written
HOSTILE = [
    ("seed-negative", {"seeds": [-1]}, "recipe seeds: seed must be a whole number at least 0"),
    ("seed-10**30", {"seeds": [10**30]}, "at most 4294967295"),
    ("target-modules-path", {"train": {"target_modules": ["../../x"]}},
     "recipe train: target_modules: '../../x' is not a module of the student"),
    ("budget-nan", {"budget_minutes": float("nan")}, "budget_minutes must be a finite number"),
    ("lr-inf", {"train": {"lr": float("inf")}}, "recipe train: lr must be a finite number"),
    ("binary", bytes(range(256)) * 4, "is not UTF-8 text"),
    ("latin-1", json.dumps({**BASE, "student": "café"}, ensure_ascii=False).encode("latin-1"), "is not UTF-8 text"),
    ("nested-100000-json", ("[" * 100_000 + "]" * 100_000).encode(), "is not valid JSON (RecursionError)"),
    ("nested-100000-yaml", ("a: " + "[" * 100_000 + "]" * 100_000).encode(), "is nested deeper than a recipe can be"),
]


@pytest.mark.parametrize("content, fragment", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_study_recipe_exits_2_with_one_line_and_writes_nothing(tmp_path, content, fragment, capsys):
    from paraknow.cli import main

    recipe = tmp_path / ("r.yaml" if "yaml" in fragment or fragment.startswith("is nested") else "r.json")
    recipe.write_bytes(content if isinstance(content, bytes) else json.dumps(recipe_with(**content)).encode())
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["study", "--recipe", str(recipe), "--out", str(tmp_path / "study")]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no study folder, nothing else
