"""Distillation arms in a study (an arm's `distill`, combinable with any init) and each cell's `cost`."""
import pytest
from study_fixtures import study_inputs, tiny_recipe

from paraknow.core.data import encode_all, load_records
from paraknow.core.errors import ParaknowError
from paraknow.core.models import load_model
from paraknow.study import parse_recipe, prepare, run_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study_distill")
    paths = study_inputs(root / "in")
    recipe = tiny_recipe(paths, seeds=[0], arms=[
        {"name": "vanilla", "init": "vanilla"},
        {"name": "pkt", "init": "pkt", "extract": {"samples": 4}},
        {"name": "kd", "init": "vanilla", "distill": {"kind": "logits", "weight": 0.5, "temperature": 2.0}},
        {"name": "pkt+kd", "init": "pkt", "extract": {"samples": 4}, "distill": {"kind": "logits"}},
        {"name": "seqkd", "init": "vanilla", "distill": {"kind": "sequences"}}])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PARAKNOW_CACHE", str(root / "cache"))
        results = run_study(parse_recipe(recipe), root / "out")
    return {"paths": paths, "results": results, "out": root / "out", "recipe": recipe, "root": root}


def test_every_cell_finishes_and_records_its_cost(study):
    cells = {c["arm"]: c for c in study["results"]["cells"]}
    assert {c["state"] for c in cells.values()} == {"finished"}
    for cell in cells.values():
        assert set(cell["cost"]) == {"teacher_tokens", "teacher_flops", "teacher_seconds", "train_seconds"}
        assert cell["cost"]["train_seconds"] > 0
    assert cells["vanilla"]["cost"]["teacher_tokens"] == 0 and cells["vanilla"]["cost"]["teacher_flops"] == 0
    teacher, tokenizer = load_model(study["paths"]["teacher"])
    params = sum(p.numel() for p in teacher.parameters())
    seed_tokens = sum(len(x.input_ids) for x in encode_all(tokenizer, load_records(study["paths"]["seed_data"])[:4]))
    train_tokens = sum(len(x.input_ids) for x in encode_all(tokenizer, load_records(study["paths"]["train_data"])))
    assert cells["pkt"]["cost"]["teacher_tokens"] == seed_tokens  # one sensitivity pass over the seeds
    assert cells["pkt"]["cost"]["teacher_flops"] == 6 * params * seed_tokens
    assert cells["kd"]["cost"]["teacher_tokens"] == train_tokens  # one forward per record (1 epoch)
    assert cells["kd"]["cost"]["teacher_flops"] == 2 * params * train_tokens
    assert cells["pkt+kd"]["cost"]["teacher_tokens"] == seed_tokens + train_tokens
    assert cells["seqkd"]["cost"]["teacher_tokens"] > 0 and cells["seqkd"]["cost"]["teacher_seconds"] > 0


def test_results_csv_has_the_cost_as_columns(study):
    import csv

    rows = {r["arm"]: r for r in csv.DictReader((study["out"] / "results.csv").open())}
    cells = {c["arm"]: c for c in study["results"]["cells"]}
    assert int(rows["kd"]["teacher_tokens"]) == cells["kd"]["cost"]["teacher_tokens"]
    assert float(rows["pkt"]["teacher_flops"]) == cells["pkt"]["cost"]["teacher_flops"]


def test_distill_arms_train_with_their_teacher_settings(study):
    import json

    spec = json.loads((study["out"] / "cells" / "kd__seed0__lr0.0003" / "run" / "spec.json").read_text())
    assert (spec["distill"], spec["distill_weight"], spec["temperature"]) == ("logits", 0.5, 2.0)
    assert spec["distill_teacher"] == study["paths"]["teacher"]
    arms = {a["arm"]: a for a in study["results"]["arms"]}
    assert arms["pkt+kd"]["n"] == 1


@pytest.mark.parametrize("arm, key", [
    ({"name": "x", "init": "untuned", "distill": {"kind": "logits"}}, "arms[1].distill"),
    ({"name": "x", "init": "vanilla", "distill": {"kind": "soft"}}, "arms[1].distill.kind"),
    ({"name": "x", "init": "vanilla", "distill": {"kind": "logits", "weight": 2}}, "arms[1].distill.weight"),
    ({"name": "x", "init": "vanilla", "distill": {"kind": "logits", "temperature": 0}}, "arms[1].distill.temperature"),
    ({"name": "x", "init": "vanilla", "distill": {"kind": "logits", "alpha": 1}}, "arms[1].distill.alpha")])
def test_bad_distill_settings_name_their_key(tmp_path, arm, key):
    recipe = tiny_recipe({"student": "s", "train_data": "t", "val_data": "v", "test_data": "x", "teacher": "T"},
                         arms=[{"name": "vanilla", "init": "vanilla"}, arm])
    with pytest.raises(ParaknowError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_recipe(recipe)


def test_a_distill_arm_needs_a_teacher(tmp_path):
    recipe = tiny_recipe({"student": "s", "train_data": "t", "val_data": "v", "test_data": "x"},
                         arms=[{"name": "kd", "init": "vanilla", "distill": {"kind": "sequences"}}])
    with pytest.raises(ParaknowError, match="teacher"):
        parse_recipe(recipe)


def test_the_time_estimate_counts_the_teacher(study, monkeypatch):
    monkeypatch.setenv("PARAKNOW_CACHE", str(study["root"] / "cache"))
    _, estimate = prepare(parse_recipe(study["recipe"]), study["root"] / "fresh")
    seconds = {cell_id.split("__")[0]: s for cell_id, s in estimate.cells.items()}
    assert seconds["kd"] > seconds["vanilla"] and seconds["seqkd"] > seconds["vanilla"]
    assert seconds["pkt+kd"] > seconds["vanilla"]  # its export is pkt's (one extraction, counted in pkt's cell)
