"""Sensitivity beyond one process and one device: split samples summed across processes,
accumulators in another precision or place, device maps, and the memory plan before loading."""
import os
import subprocess
import sys

import pytest
import torch
from tiny import SEED_RECORDS, make_tokenizer, tiny_llama

from paraknow.cli import main
from paraknow.core.data import encode_all
from paraknow.core.records import to_jsonl
from paraknow.transfer.sensitivity import METRICS, SensitivityConfig, compute_sensitivity
from paraknow.transfer.sensitivity_files import load_sensitivity


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


@pytest.mark.slow
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


def test_device_map_over_several_entries_equals_plain(tokenizer, seed_records, tmp_path):
    """A teacher dispatched by accelerate (hooks moving activations between the map's entries, sums kept
    on the host) gives the plain map; a map that offloads layers to disk is refused with advice."""
    from accelerate import dispatch_model, infer_auto_device_map

    config = SensitivityConfig(samples=4, accumulate_device="cpu")
    plain = compute_sensitivity(tiny_llama(layers=3), tokenizer, seed_records, SensitivityConfig(samples=4))
    spread = tiny_llama(layers=3)
    device_map = {"model.embed_tokens": "cpu", **{f"model.layers.{i}": "cpu" for i in range(3)},
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    dispatch_model(spread, device_map, force_hooks=True)
    assert hasattr(spread.model.layers[1], "_hf_hook")
    mapped = compute_sensitivity(spread, tokenizer, seed_records, config)
    assert set(mapped) == set(plain)
    for name in plain:
        torch.testing.assert_close(mapped[name], plain[name], rtol=1e-6, atol=0)

    offloading = tiny_llama(layers=3)
    weights = sum(p.numel() * 4 for p in offloading.parameters())
    device_map = infer_auto_device_map(offloading, max_memory={"cpu": weights // 2},
                                       no_split_module_classes=["LlamaDecoderLayer"])
    assert "disk" in device_map.values()
    dispatch_model(offloading, device_map, offload_dir=str(tmp_path / "offload"))
    with pytest.raises(Exception, match="offloaded to disk or host.*--max-memory"):
        compute_sensitivity(offloading, tokenizer, seed_records, config)


def test_bfloat16_sums_keep_the_ranking(tokenizer, seed_records):
    from paraknow.transfer.mapping import layer_scores

    model = tiny_llama(layers=4)
    exact = compute_sensitivity(model, tokenizer, seed_records, SensitivityConfig(samples=8))
    low = compute_sensitivity(model, tokenizer, seed_records,
                              SensitivityConfig(samples=8, accumulate_dtype="bfloat16", accumulate_device="cpu"))
    assert all(low[k].dtype == torch.float32 for k in low)  # the map itself is float32 either way
    for name in exact:
        torch.testing.assert_close(low[name], exact[name], rtol=2e-2, atol=1e-3 * float(exact[name].max()))
    assert any(not torch.equal(low[k], exact[k]) for k in exact)  # the sums really were bfloat16
    ranking = lambda scores: sorted(range(4), key=layer_scores(scores, 4).__getitem__)  # noqa: E731
    assert ranking(low) == ranking(exact)


@pytest.mark.parametrize("metric", ["taylor-abs", "taylor-sum", "fisher"])
def test_bfloat16_weights_equal_an_independent_float32_accumulation(tokenizer, seed_records, metric):
    """bf16 weights, float32 sums: each bf16 gradient is added without a float32 copy of it; the map
    must equal plain autograd per sample (with the same matrix products), every gradient and weight
    widened to float32 first."""
    from paraknow.core.data import collate
    from paraknow.core.numerics import float32_matmuls

    model = tiny_llama(layers=2).to(torch.bfloat16)
    items = encode_all(tokenizer, seed_records[:4], 2048)
    params = dict(model.named_parameters())
    sums = {n: torch.zeros(p.shape) for n, p in params.items()}
    batches = [items] if metric == "taylor-sum" else [[item] for item in items]
    for batch in batches:
        model.zero_grad(set_to_none=True)
        encoded = collate(batch, pad_id=0)
        with float32_matmuls(model):  # the products as the pass computes them on this CPU (core/numerics.py)
            if metric == "taylor-sum":
                from paraknow.core.data import per_sample_loss

                labels = encoded.pop("labels")
                per_sample_loss(model(**encoded).logits, labels).sum().backward()
            else:
                model(**encoded).loss.backward()
        for n, p in params.items():
            g = p.grad.float()
            sums[n] += g.abs() if metric == "taylor-abs" else (g if metric == "taylor-sum" else g.square())
    model.zero_grad(set_to_none=True)
    theta = {n: p.detach().float() for n, p in params.items()}
    expected = {n: (sums[n] * theta[n].abs() if metric == "taylor-abs" else
                    (sums[n] * theta[n]).abs() if metric == "taylor-sum" else sums[n] * theta[n].square())
                for n in params}
    got = compute_sensitivity(model, tokenizer, seed_records, SensitivityConfig(samples=4, metric=metric, batch_size=4))
    for n in params:
        assert got[n].dtype == torch.float32
        torch.testing.assert_close(got[n], expected[n], rtol=1e-5, atol=1e-6 * float(expected[n].abs().max()) + 1e-30)


def test_memory_estimate_parts():
    from transformers import LlamaConfig

    from paraknow.core.memory import estimate_sensitivity_memory

    config = LlamaConfig(num_hidden_layers=4, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                         vocab_size=1000)
    n = 4 * (4 * 256 * 256 + 3 * 256 * 512 + 2 * 256) + 2 * 1000 * 256 + 256
    base = estimate_sensitivity_memory(config, "float32", "float32", False, 128)
    assert base.weights == base.sums == base.result == 4 * n and not base.sums_on_host
    assert base.device_bytes() == base.weights + base.sums + base.activations and base.host_bytes() == 4 * n
    half = estimate_sensitivity_memory(config, "bfloat16", "bfloat16", False, 128)
    assert half.weights == half.sums == 2 * n and half.activations < base.activations
    host = estimate_sensitivity_memory(config, "bfloat16", "float32", True, 128)
    assert host.device_bytes() == host.weights + host.activations and host.host_bytes() == 4 * n  # sums = the map
    longer = estimate_sensitivity_memory(config, "float32", "float32", False, 256)
    assert longer.activations > base.activations
    assert estimate_sensitivity_memory(config, per_parameter_sums=False).sums == 0


def test_memory_check_names_what_fits(tmp_path, saved_teacher, capsys):
    from paraknow.core.errors import ParaknowError
    from paraknow.core.memory import estimate_sensitivity_memory
    from paraknow.core.models import load_config
    from paraknow.transfer.sensitivity import check_memory

    model, data = saved_teacher
    hf_config = load_config(model)
    config = SensitivityConfig(samples=4, max_length=64)
    full = estimate_sensitivity_memory(hf_config, "float32", "float32", False, 64)
    cheap = estimate_sensitivity_memory(hf_config, "bfloat16", "float32", False, 64)
    budget = (cheap.device_bytes() + cheap.host_bytes() + full.device_bytes() + full.host_bytes()) // 2
    assert check_memory(hf_config, config, "float32", "cpu", {"cpu": 10 * budget}).weights == full.weights
    with pytest.raises(ParaknowError, match=r"--dtype bfloat16 would fit"):
        check_memory(hf_config, config, "float32", "cpu", {"cpu": budget})
    out = tmp_path / "s.safetensors"
    code = main(["sensitivity", "--model", model, "--data", data, "--out", str(out), "--samples", "4",
                 "--max-length", "64", "--device", "auto", "--max-memory", "cpu=1KiB"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "lower --max-length" in err and not out.exists()
    assert main(["sensitivity", "--model", model, "--data", data, "--out", str(out), "--max-memory", "cpu=lots"]) == 2
    assert "DEVICE=SIZE" in capsys.readouterr().err


def test_device_auto_with_max_memory_equals_plain(tmp_path, saved_teacher):
    """`--device auto --max-memory` loads through from_pretrained's device map (all on the host here)."""
    model, data = saved_teacher
    common = ["--model", model, "--data", data, "--samples", "3", "--max-length", "64"]
    assert main(["sensitivity", *common, "--device", "cpu", "--out", str(tmp_path / "a.safetensors")]) == 0
    assert main(["sensitivity", *common, "--device", "auto", "--max-memory", "cpu=4GiB", "--accumulate-device", "cpu",
                 "--out", str(tmp_path / "b.safetensors")]) == 0
    plain, _ = load_sensitivity(tmp_path / "a.safetensors")
    mapped, _ = load_sensitivity(tmp_path / "b.safetensors")
    assert max_relative_difference(mapped, plain) <= 1e-6
