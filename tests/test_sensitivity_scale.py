"""Sensitivity beyond one process and one device: split samples summed across processes,
accumulators in another precision or place, device maps, and the memory plan before loading."""
import os
import subprocess
import sys

import pytest
import torch

from paraknow.cli import main
from paraknow.data import encode_all, to_jsonl
from paraknow.sensitivity import METRICS, SensitivityConfig, compute_sensitivity, load_sensitivity
from conftest import SEED_RECORDS, make_tokenizer, tiny_llama


@pytest.fixture
def saved_teacher(tmp_path):
    path = tmp_path / "teacher"
    tiny_llama(layers=3, hidden=64, ffn=128, heads=4, kv_heads=2, seed=1).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    data = tmp_path / "seeds.jsonl"
    data.write_text(to_jsonl(SEED_RECORDS))
    return str(path), str(data)


def max_relative_difference(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float(((a[k] - b[k]).abs() / b[k].abs().clamp_min(1e-30)).max()) for k in a)


@pytest.mark.parametrize("metric", list(METRICS))
def test_sums_of_split_samples_add_up_to_the_whole(tokenizer, seed_records, metric):
    """What each process of a launch does (samples k, k+N, ...), summed, gives the one-process map."""
    model = tiny_llama(layers=2)
    config = SensitivityConfig(metric=metric, samples=7, batch_size=2)
    whole = compute_sensitivity(model, tokenizer, seed_records, config)
    items = encode_all(tokenizer, seed_records[:7], config.max_length)
    parts = [METRICS[metric].accumulate(model, items[k::3], config) for k in range(3)]
    summed = {name: sum(part[name] for part in parts) for name in parts[0]}
    split = METRICS[metric].finish(model, summed)
    for name, scores in whole.items():  # taylor-sum's signed sums cancel: near-zero entries get an atol
        torch.testing.assert_close(split[name], scores, rtol=1e-5, atol=1e-6 * float(scores.abs().max()))


def test_two_processes_over_gloo_equal_one(tmp_path, saved_teacher):
    """`torchrun --nproc-per-node 2 -m paraknow sensitivity`: 5 samples split 3 + 2, one sum at the end,
    rank 0 writes the file; the map equals the single-process one."""
    model, data = saved_teacher
    single, double = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    common = ["--model", model, "--data", data, "--samples", "5", "--max-length", "64", "--device", "cpu"]
    assert main(["sensitivity", *common, "--out", str(single)]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "paraknow", "sensitivity", *common, "--out", str(double)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr
    assert proc.stdout.count('"world_size": 2') == 1  # rank 0 alone reports
    one, meta_one = load_sensitivity(single)
    two, meta_two = load_sensitivity(double)
    assert meta_one["world_size"] == 1 and meta_two["world_size"] == 2
    assert {k: v for k, v in meta_one.items() if k != "world_size"} == \
           {k: v for k, v in meta_two.items() if k != "world_size"}
    assert max_relative_difference(two, one) <= 1e-5
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".safetensors") == ["one.safetensors",
                                                                                          "two.safetensors"]
