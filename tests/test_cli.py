"""`python -m paraknow sensitivity|extract` on tiny saved models: outputs, exit codes, nothing half-written."""
import json
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open

from paraknow.cli import main
from paraknow.transfer.sensitivity_files import load_sensitivity


def test_sensitivity_command(tmp_path, saved_pair, capsys):
    out = tmp_path / "sens.safetensors"
    code = main(["sensitivity", "--model", saved_pair["teacher"], "--data", saved_pair["data"],
                 "--out", str(out), "--samples", "5", "--device", "cpu"])
    assert code == 0
    scores, meta = load_sensitivity(out)
    assert meta["metric"] == "taylor-abs" and meta["samples"] == 5 and len(meta["data_sha256"]) == 64
    with safe_open(str(out), "pt") as fh:
        assert all(fh.get_tensor(k).dtype == torch.float32 for k in fh.keys())
    assert scores["model.layers.0.mlp.up_proj.weight"].shape == (192, 96)


def test_extract_command(tmp_path, saved_pair):
    out = tmp_path / "export"
    code = main(["extract", "--teacher", saved_pair["teacher"], "--student", saved_pair["student"],
                 "--data", saved_pair["data"], "--out", str(out), "--rank", "4", "--alpha", "8",
                 "--samples", "6", "--layers", "manual:3,-", "--device", "cpu"])
    assert code == 0
    manifest = json.loads((out / "paraknow.json").read_text())
    for key in ("teacher", "student", "metric", "samples", "data_sha256", "rank", "alpha", "mode",
                "structure", "layer_map", "layer_scores", "modules"):
        assert key in manifest
    assert manifest["layer_map"] == [3, None]
    module = manifest["modules"]["model.layers.0.mlp.down_proj"]
    assert module["teacher_param"] == "model.layers.3.mlp.down_proj.weight"
    assert 0 < module["captured"] <= 1 and 0 < module["energy"] <= 1 and module["shape"] == [64, 128]
    with safe_open(str(out / "selection.safetensors"), "pt") as fh:
        assert fh.get_tensor("model.layers.0.mlp.down_proj.rows").dtype == torch.int64
    from transformers import AutoModelForCausalLM
    student = AutoModelForCausalLM.from_pretrained(saved_pair["student"])
    PeftModel.from_pretrained(student, str(out))  # a standard PEFT adapter


@pytest.mark.parametrize("argv, reason", [
    (["--model", "/nope/model", "--data", "DATA"], "model path not found"),
    (["--model", "TEACHER", "--data", "/nope.jsonl"], "data file not found"),
    (["--model", "TEACHER", "--data", "BAD"], "line 2"),
    (["--model", "TEACHER", "--data", "DATA", "--samples", "500"], "only 8"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, saved_pair, argv, reason, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"messages": oops}\n')
    subs = {"TEACHER": saved_pair["teacher"], "DATA": saved_pair["data"], "BAD": str(bad)}
    out = tmp_path / "out.safetensors"
    code = main(["sensitivity", *[subs.get(a, a) for a in argv], "--out", str(out), "--device", "cpu"])
    stderr = capsys.readouterr().err
    assert code == 2
    assert reason in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.slow
def test_extract_refuses_smaller_teacher(tmp_path, saved_pair):
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "paraknow", "extract", "--teacher", saved_pair["student"],
                           "--student", saved_pair["teacher"], "--data", saved_pair["data"], "--out", str(out),
                           "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 2 and "deeper teacher" in proc.stderr
    assert not out.exists()
