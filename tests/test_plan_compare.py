"""`extract --sensitivity FILE` and `plan --compare` on tiny saved models with hand-made maps."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from paraknow.cli import main
from paraknow.core.data import load_records
from paraknow.core.paths import cache_dir
from paraknow.extract import STRUCTURES
from paraknow.transfer.mapping import LAYER_STRATEGIES
from paraknow.transfer.sensitivity import SensitivityConfig
from paraknow.transfer.sensitivity_files import save_sensitivity, sensitivity_meta
from paraknow.transfer.structure import COHERENT


def hand_made_map(saved_pair, path, hot_layers, model=None, samples=6, data=None):
    """A map of the teacher's shapes: small everywhere, large on `hot_layers` (what `sensitivity` would write)."""
    teacher = AutoModelForCausalLM.from_pretrained(saved_pair["teacher"])
    generator = torch.Generator().manual_seed(0)
    scores = {}
    for name, p in teacher.named_parameters():
        s = torch.rand(p.shape, generator=generator)
        if any(f"layers.{i}." in name for i in hot_layers):
            s *= 100
        scores[name] = s
    records = load_records(data or saved_pair["data"])
    meta = sensitivity_meta(model or saved_pair["teacher"], SensitivityConfig(samples=samples), records,
                            data=saved_pair["data"])
    save_sensitivity(path, scores, meta)
    return path


def _extract(saved_pair, tmp_path, sens, *extra):
    out = tmp_path / "export"
    code = main(["extract", "--teacher", saved_pair["teacher"], "--student", saved_pair["student"],
                 "--sensitivity", str(sens), "--out", str(out), "--rank", "4", "--device", "cpu", *extra])
    return code, out


@pytest.mark.parametrize("hot", [(1, 3), (0, 2)])
def test_extract_uses_the_given_map(tmp_path, saved_pair, hot, capsys):
    sens = hand_made_map(saved_pair, tmp_path / "sens.safetensors", hot)
    code, out = _extract(saved_pair, tmp_path, sens)  # no --data: the map names its data
    assert code == 0
    manifest = json.loads((out / "paraknow.json").read_text())
    assert manifest["layer_map"] == list(hot)
    assert manifest["sensitivity_file"] == str(sens) and manifest["samples"] == 6
    printed = json.loads(capsys.readouterr().out)
    assert printed["sensitivity"]["sensitivity_file"] == str(sens)
    assert not list(cache_dir("sensitivity").glob("*.safetensors"))  # nothing computed


@pytest.mark.parametrize("change, reason", [
    ({"model": "demo:teacher"}, "not of --teacher"),
    ({"data": "OTHER"}, "other seed data"),
    ({"flags": ["--samples", "4"]}, "computed with samples 6, not 4"),
    ({"flags": ["--metric", "fisher"]}, "computed with metric taylor-abs, not fisher"),
])
def test_a_mismatched_map_exits_2(tmp_path, saved_pair, change, reason, capsys):
    other = tmp_path / "other.jsonl"
    other.write_text('{"text": "another sample"}\n' * 8)
    sens = hand_made_map(saved_pair, tmp_path / "sens.safetensors", (1, 3), model=change.get("model"),
                         data=str(other) if change.get("data") else None)
    code, out = _extract(saved_pair, tmp_path, sens, *change.get("flags", []))
    err = capsys.readouterr().err
    assert code == 2 and reason in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_map_of_another_model_exits_2(tmp_path, saved_pair, capsys):
    sens = tmp_path / "sens.safetensors"
    scores = {"model.layers.0.mlp.up_proj.weight": torch.ones(7, 5)}
    save_sensitivity(sens, scores, sensitivity_meta(saved_pair["teacher"], SensitivityConfig(samples=6),
                                                    load_records(saved_pair["data"]), data=saved_pair["data"]))
    code, out = _extract(saved_pair, tmp_path, sens)
    assert code == 2 and "does not fit the teacher" in capsys.readouterr().err and not out.exists()


def _plan_rows(saved_pair, sens, capsys, *extra):
    code = main(["plan", "--teacher", saved_pair["teacher"], "--student", saved_pair["student"],
                 "--sensitivity", str(sens), "--rank", "4", "--device", "cpu", *extra])
    assert code == 0
    return [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]


def test_plan_compare_rows_equal_what_extract_writes(tmp_path, saved_pair, capsys):
    sens = hand_made_map(saved_pair, tmp_path / "sens.safetensors", (1, 3))
    rows = _plan_rows(saved_pair, sens, capsys, "--compare")
    strategies = [s for s in LAYER_STRATEGIES if s != "manual"]
    assert {(r["structure"], r["layers"], r["coherent"]) for r in rows} == {
        (s, ly, c) for s in STRUCTURES for ly in strategies for c in COHERENT}
    for key in ("captured", "lift", "energy", "seconds", "cos", "modules"):
        assert all(key in r for r in rows if "error" not in r)
    by = {(r["structure"], r["layers"], r["coherent"]): r for r in rows}
    for i, (structure, layers, coherent) in enumerate([("rowcol", "uniform", "off"), ("submatrix", "first", "layer")]):
        out = tmp_path / f"export{i}"
        assert main(["extract", "--teacher", saved_pair["teacher"], "--student", saved_pair["student"],
                     "--sensitivity", str(sens), "--out", str(out), "--rank", "4", "--device", "cpu",
                     "--structure", structure, "--layers", layers, "--coherent", coherent]) == 0
        capsys.readouterr()
        modules = json.loads((out / "paraknow.json").read_text())["modules"].values()
        row = by[(structure, layers, coherent)]
        assert row["modules"] == len(modules)
        assert row["captured"] == pytest.approx(sum(m["captured"] for m in modules) / len(modules), abs=1e-12)
        assert row["energy"] == pytest.approx(sum(m["energy"] for m in modules) / len(modules), abs=1e-9)
        assert row["cos"] == pytest.approx(sum(m["cos_to_student"] for m in modules) / len(modules), abs=1e-9)


def test_plan_without_compare_is_the_given_settings(tmp_path, saved_pair, capsys):
    sens = hand_made_map(saved_pair, tmp_path / "sens.safetensors", (1, 3))
    rows = _plan_rows(saved_pair, sens, capsys, "--structure", "rowcol")
    assert [(r["structure"], r["layers"], r["coherent"]) for r in rows] == [("rowcol", "sensitivity", "off")]
