"""The session recipe (paraknow/transfer/recipe.py): one set of keys for the recipe file, the app's
URL and `extract --recipe FILE`; a bad recipe exits 2 with one line naming the key."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from paraknow import cli
from paraknow.core.errors import ParaknowError
from paraknow.transfer.recipe import KEYS, SessionRecipe, from_query, parse_recipe, recipe_from_text, to_json

FULL = {"teacher": "demo:teacher", "student": "demo:student", "data": "task:facts:seed", "name": "my-export",
        "metric": "fisher", "samples": 12, "max_length": 256, "rank": 8, "alpha": 4.5, "layers": "manual:7,-,3,1",
        "structure": "rowcol", "coherent": "layer", "modules": ["attn", "gate_proj"], "mode": "additive",
        "split": "sqrt", "svd": "exact", "seed": 3, "dtype": "float32", "device": "cpu",
        "overrides": {"model.layers.0.self_attn.q_proj": [2, 5]}}


def test_a_full_recipe_gives_the_configs_and_survives_the_url_and_the_file():
    recipe = parse_recipe(FULL)
    sens, transfer = recipe.sensitivity_config(), recipe.transfer_config()
    assert (sens.metric, sens.samples, sens.max_length) == ("fisher", 12, 256)
    assert transfer.layers == "manual" and transfer.manual_map == [7, None, 3, 1]
    assert transfer.modules == ("attn", "gate_proj") and transfer.overrides == {"model.layers.0.self_attn.q_proj": (2, 5)}
    assert (transfer.rank, transfer.alpha, transfer.mode, transfer.split, transfer.svd, transfer.seed) == \
        (8, 4.5, "additive", "sqrt", "exact", 3)
    query = recipe.to_query()
    assert all(isinstance(v, str) for v in query.values())
    back, problems = from_query(query)
    assert problems == [] and back.to_dict() == recipe.to_dict()
    assert recipe_from_text(to_json(recipe)).to_dict() == recipe.to_dict()
    assert set(recipe.to_dict()) == set(KEYS)


def test_the_url_leaves_out_defaults_and_keeps_what_it_can():
    recipe = parse_recipe({"teacher": "demo:teacher", "samples": 32, "rank": 16, "structure": "heads"})
    assert recipe.to_query() == {"teacher": "demo:teacher", "structure": "heads"}  # 32 and 16 are the defaults
    back, problems = from_query({"teacher": "demo:teacher", "rank": "zero", "samples": "8", "utm_source": "x"})
    assert back.teacher == "demo:teacher" and back.get("samples") == 8 and back.get("rank") == 16
    assert len(problems) == 1 and "'rank'" in problems[0]


BAD = [  # (recipe, fragment of the one-line error)
    ({"teacher": "demo:teacher", "rnak": 3}, "recipe key 'rnak' is unknown"),
    ({"rank": "8"}, "'rank' must be a whole number"),
    ({"rank": 0}, "recipe key 'rank'"),
    ({"alpha": float("inf")}, "recipe key 'alpha'"),
    ({"samples": True}, "'samples' must be a whole number"),
    ({"metric": "nope"}, "recipe key 'metric'"),
    ({"layers": "sideways"}, "recipe key 'layers'"),
    ({"modules": ["attn", "wings"]}, "recipe key 'modules'"),
    ({"overrides": {"m": [1]}}, "recipe key 'overrides'"),
    ({"name": "../up"}, "recipe key 'name'"),
    ({"dtype": "float8"}, "recipe key 'dtype'"),
    ({"teacher": ""}, "recipe key 'teacher'"),
    ([1, 2], "must be a JSON object"),
]


@pytest.mark.parametrize("recipe, fragment", BAD, ids=[f[1][:28] for f in BAD])
def test_a_bad_recipe_exits_2_with_one_line_naming_the_key(tmp_path, capsys, recipe, fragment):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe, allow_nan=True))
    out = tmp_path / "out"
    code = cli.main(["extract", "--recipe", str(path), "--teacher", "demo:teacher", "--student", "demo:student",
                     "--data", "task:arith:seed", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.count("\n") == 1, err
    assert not out.exists()


def test_unreadable_recipe_files(tmp_path, capsys):
    (tmp_path / "r.json").write_text("{not json")
    for path in (tmp_path / "r.json", tmp_path / "missing.json"):
        assert cli.main(["extract", "--recipe", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err
    with pytest.raises(ParaknowError):
        recipe_from_text("[]")


def _adapter(directory: Path) -> dict:
    return load_file(str(directory / "adapter_model.safetensors"))


def test_extract_recipe_equals_the_same_flags_and_flags_override_it(saved_pair, tmp_path, capsys):
    recipe = {"teacher": saved_pair["teacher"], "student": saved_pair["student"], "data": saved_pair["data"],
              "samples": 4, "max_length": 64, "rank": 4, "alpha": 8, "layers": "uniform", "modules": "attn,ffn",
              "structure": "rowcol", "name": "from-recipe"}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    assert cli.main(["extract", "--recipe", str(path), "--out", str(tmp_path / "a"), "--rank", "2"]) == 0
    assert cli.main(["extract", "--teacher", saved_pair["teacher"], "--student", saved_pair["student"],
                     "--data", saved_pair["data"], "--samples", "4", "--max-length", "64", "--rank", "2",
                     "--alpha", "8", "--layers", "uniform", "--modules", "attn,ffn", "--structure", "rowcol",
                     "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    a, b = _adapter(tmp_path / "a"), _adapter(tmp_path / "b")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    manifest = json.loads((tmp_path / "a" / "paraknow.json").read_text())
    assert manifest["rank"] == 2 and manifest["samples"] == 4 and manifest["structure"] == "rowcol"
    # without --out, the recipe's name writes where the app writes its exports
    assert cli.main(["extract", "--recipe", str(path)]) == 0
    from paraknow.core.paths import cache_dir

    assert json.loads(capsys.readouterr().out)["out"] == str(cache_dir("exports") / "from-recipe")
    assert (cache_dir("exports") / "from-recipe" / "paraknow.json").is_file()


def test_missing_references_are_named(capsys, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"teacher": "demo:teacher"}))
    assert cli.main(["extract", "--recipe", str(path)]) == 2
    assert "--student is required" in capsys.readouterr().err
    assert SessionRecipe().to_query() == {}
