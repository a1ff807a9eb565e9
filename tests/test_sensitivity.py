import pytest
import torch
from tiny import tiny_llama

from paraknow.core.data import collate, encode_all
from paraknow.core.errors import ParaknowError
from paraknow.core.records import records_sha256
from paraknow.transfer.mapping import layer_scores
from paraknow.transfer.sensitivity import SensitivityConfig, compute_sensitivity
from paraknow.transfer.sensitivity_files import (cached_sensitivity, cached_sensitivity_hit, load_sensitivity,
    save_sensitivity)
from paraknow.transfer.sensitivity_map import group_shares, marginals, module_table, pooled, sensitivity_map


def reference_grads(model, tokenizer, records):
    """Plain per-sample backward, independent of paraknow's hooks: list of {name: grad}."""
    grads = []
    for item in encode_all(tokenizer, records):
        model.zero_grad(set_to_none=True)
        model(**collate([item], pad_id=0)).loss.backward()
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("tied", [False, True])
def test_taylor_abs_is_sum_of_per_sample_abs(tokenizer, seed_records, tied):
    model = tiny_llama(tied=tied)
    scores = compute_sensitivity(model, tokenizer, seed_records,
                                 SensitivityConfig(samples=len(seed_records)))
    grads = reference_grads(model, tokenizer, seed_records)
    params = dict(model.named_parameters())
    assert set(scores) == set(params)
    for name, p in params.items():
        expected = sum((p.detach() * g[name]).abs() for g in grads)
        torch.testing.assert_close(scores[name], expected, rtol=1e-5, atol=1e-8)
        assert scores[name].dtype == torch.float32
    # abs per sample then summed differs from |sum| (the taylor-sum metric): the test can tell them apart
    name = "model.layers.0.mlp.up_proj.weight"
    summed = (params[name].detach() * sum(g[name] for g in grads)).abs()
    assert not torch.allclose(scores[name], summed)


def test_other_metrics_match_definitions(tokenizer, seed_records):
    model = tiny_llama()
    n = len(seed_records)
    grads = reference_grads(model, tokenizer, seed_records)
    params = dict(model.named_parameters())
    name = "model.layers.1.self_attn.k_proj.weight"
    fisher = compute_sensitivity(model, tokenizer, seed_records, SensitivityConfig("fisher", n))
    torch.testing.assert_close(fisher[name], params[name].detach() ** 2 * sum(g[name] ** 2 for g in grads),
                               rtol=1e-4, atol=1e-10)
    tsum = compute_sensitivity(model, tokenizer, seed_records, SensitivityConfig("taylor-sum", n, batch_size=3))
    torch.testing.assert_close(tsum[name], (params[name].detach() * sum(g[name] for g in grads)).abs(),
                               rtol=1e-3, atol=1e-6)
    mag = compute_sensitivity(model, tokenizer, seed_records, SensitivityConfig("magnitude", n))
    torch.testing.assert_close(mag[name], params[name].detach().abs())


def test_wanda_uses_input_norms(tokenizer, seed_records):
    model = tiny_llama()
    n = len(seed_records)
    captured = []
    layer = model.model.layers[0].mlp.down_proj
    handle = layer.register_forward_hook(lambda m, i, o: captured.append(i[0].detach()))
    items = encode_all(tokenizer, seed_records)
    with torch.no_grad():
        for item in items:  # one at a time, no padding: the batched metric must ignore its padding
            model(input_ids=torch.tensor([item.input_ids]))
    handle.remove()
    scores = compute_sensitivity(model, tokenizer, seed_records, SensitivityConfig("wanda", n, batch_size=3))
    x = torch.cat([c.reshape(-1, c.shape[-1]) for c in captured])  # [tokens, in]
    expected = layer.weight.detach().abs() * x.norm(dim=0)[None, :]
    torch.testing.assert_close(scores["model.layers.0.mlp.down_proj.weight"], expected, rtol=1e-4, atol=1e-6)


def test_file_roundtrip_and_cache(tmp_path, tokenizer, seed_records):
    model = tiny_llama()
    config = SensitivityConfig(samples=4)
    scores, meta, hit = cached_sensitivity_hit(model, tokenizer, seed_records, config)
    again, meta2, hit2 = cached_sensitivity_hit(model, tokenizer, seed_records, config)
    assert not hit and hit2  # the second call reads the file the first one wrote
    assert meta == meta2 and all(torch.equal(scores[k], again[k]) for k in scores)
    assert cached_sensitivity(model, tokenizer, seed_records, config)[1] == meta
    with torch.no_grad():  # changed weights -> a different key, never the stale map
        model.model.layers[0].mlp.up_proj.weight.mul_(2)
    changed, _ = cached_sensitivity(model, tokenizer, seed_records, config)
    assert not torch.equal(changed["model.layers.0.mlp.up_proj.weight"], scores["model.layers.0.mlp.up_proj.weight"])
    path = tmp_path / "s.safetensors"
    save_sensitivity(path, scores, {"metric": "taylor-abs", "samples": 4})
    loaded, loaded_meta = load_sensitivity(path)
    assert loaded_meta == {"metric": "taylor-abs", "samples": 4}
    assert all(torch.equal(loaded[k], scores[k]) for k in scores)


def test_sensitivity_map_says_whether_it_came_from_the_cache(tokenizer, seed_records):
    model = tiny_llama(layers=3)
    config = SensitivityConfig(samples=4)
    first = sensitivity_map(model, tokenizer, seed_records, config, "seeds", 3, model_ref="tiny")
    second = sensitivity_map(model, tokenizer, seed_records, config, "seeds again", 3, model_ref="tiny")
    assert not first.cached and second.cached and first.id != second.id
    assert first.records == seed_records[:4] and first.data_sha256 == records_sha256(seed_records[:4])
    reference = compute_sensitivity(model, tokenizer, seed_records, config)
    assert all(torch.equal(first.scores[k], reference[k]) and torch.equal(second.scores[k], reference[k])
               for k in reference)
    assert first.layer_scores == pytest.approx(layer_scores(reference, 3))
    assert first.table == module_table(reference) and first.shares == group_shares(reference)
    assert first.meta["data_sha256"] == first.data_sha256 and first.meta["model"] == "tiny"
    assert second.provenance("t", "s") == {"teacher": "t", "student": "s", "data": "seeds again",
                                           "metric": "taylor-abs", "samples": 4, "max_length": 2048,
                                           "data_sha256": first.data_sha256}
    with pytest.raises(ParaknowError, match="only 8"):
        sensitivity_map(model, tokenizer, seed_records, SensitivityConfig(samples=9), "seeds", 3)


def test_summaries(tokenizer, seed_records):
    model = tiny_llama(layers=3)
    scores = compute_sensitivity(model, tokenizer, seed_records, SensitivityConfig(samples=3))
    table = module_table(scores)
    assert len(table) == 3 * 7
    row = next(r for r in table if r["layer"] == 2 and r["module"] == "gate_proj")
    assert row["sum"] == pytest.approx(float(scores["model.layers.2.mlp.gate_proj.weight"].double().sum()))
    shares = group_shares(scores)
    total = sum(float(v.double().sum()) for v in scores.values())
    ffn = sum(float(v.double().sum()) for k, v in scores.items() if k.endswith(("gate_proj.weight", "up_proj.weight",
                                                                                    "down_proj.weight")))
    embeddings = sum(float(v.double().sum()) for k, v in scores.items() if k.endswith(("embed_tokens.weight",
                                                                                           "lm_head.weight")))
    assert shares["ffn"] == pytest.approx(ffn / total) and shares["embeddings"] == pytest.approx(embeddings / total)
    assert 0 < shares["other"] < shares["attention"]  # the norms' share is small but there
    m = torch.rand(300, 70)
    rows, cols = marginals(m)
    torch.testing.assert_close(rows, m.double().sum(1))
    small = pooled(m, 100, 35)
    assert small.shape == (100, 35)
    torch.testing.assert_close(small[0, 0], m[:3, :2].mean())


def test_bad_settings(tokenizer, seed_records):
    model = tiny_llama()
    with pytest.raises(ParaknowError, match="only 8"):
        compute_sensitivity(model, tokenizer, seed_records, SensitivityConfig(samples=32))
    with pytest.raises(ParaknowError, match="unknown metric"):
        compute_sensitivity(model, tokenizer, seed_records, SensitivityConfig(metric="nope"))
