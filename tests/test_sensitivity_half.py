"""A bfloat16 teacher on a CPU without native bfloat16 kernels: the sensitivity pass computes its
matrix products in float32 (paraknow.core.numerics._Float32Linear), 30x faster there, with the
gradients of the bfloat16 pass up to bfloat16 rounding; the model is left as it was."""
from __future__ import annotations

import pytest
import torch
from tiny import tiny_llama

from paraknow.core import numerics
from paraknow.core.numerics import float32_matmuls
from paraknow.transfer.sensitivity import SensitivityConfig, compute_sensitivity


def bf16_model(tied=False):
    return tiny_llama(layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, tied=tied, seed=3).to(torch.bfloat16)


@pytest.mark.parametrize("tied", [False, True])
def test_float32_products_give_the_bfloat16_gradients(tokenizer, seed_records, monkeypatch, tied):
    from paraknow.core.data import collate, encode_all

    model = bf16_model(tied)
    batch = collate(encode_all(tokenizer, seed_records[:1], 64), pad_id=0)
    model(**batch).loss.backward()
    native = {n: p.grad.float().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    monkeypatch.setattr(numerics, "half_matmuls_are_slow", lambda model: True)
    with float32_matmuls(model):
        model(**batch).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad.dtype == torch.bfloat16
        rel = (p.grad.float() - native[name]).norm() / native[name].norm()
        assert rel < 0.03, (name, float(rel))  # bfloat16 rounding of each entry: 2^-8 relative
    assert not any("forward" in vars(m) for m in model.modules())  # the original forwards are back


def test_sensitivity_pass_with_float32_products_matches_the_plain_one(tokenizer, seed_records, monkeypatch):
    config = SensitivityConfig(samples=3, max_length=64)
    monkeypatch.setattr(numerics, "half_matmuls_are_slow", lambda model: False)
    plain = compute_sensitivity(bf16_model(), tokenizer, seed_records, config)
    monkeypatch.setattr(numerics, "half_matmuls_are_slow", lambda model: True)
    fast = compute_sensitivity(bf16_model(), tokenizer, seed_records, config)
    for name, s in plain.items():
        assert fast[name].dtype == torch.float32
        assert ((fast[name] - s).norm() / s.norm()) < 0.03, name


def test_only_half_precision_cpu_models_are_patched():
    assert not numerics.half_matmuls_are_slow(tiny_llama())  # float32: untouched


def test_the_forward_passes_around_the_map_use_float32_products_too(tokenizer, seed_records, monkeypatch):
    """The seed losses (after every sensitivity pass) and the layer similarity (`--layers cka`) run the bfloat16
    teacher forward: through float32 products as well (the scalar fallback made the seed losses of the 1.5B
    teacher take longer than its sensitivity pass), with the losses of the plain pass up to rounding."""
    from paraknow.transfer.seeds import seed_losses
    from paraknow.transfer.similarity import _hidden_states

    model = bf16_model()
    monkeypatch.setattr(numerics, "half_matmuls_are_slow", lambda model: False)
    plain = seed_losses(model, tokenizer, seed_records[:3], 64)  # bfloat16 products
    calls = []
    real = numerics._Float32Linear.forward
    monkeypatch.setattr(numerics._Float32Linear, "forward",
                        staticmethod(lambda ctx, *args: calls.append(1) or real(ctx, *args)))
    monkeypatch.setattr(numerics, "half_matmuls_are_slow", lambda model: True)
    products = seed_losses(model, tokenizer, seed_records[:3], 64)
    assert calls and products == pytest.approx(plain, rel=0.03)
    calls.clear()
    _hidden_states(model, [1, 2, 3, 4])
    assert calls


def test_a_large_weight_is_converted_a_slice_of_rows_at_a_time(monkeypatch):
    """A weight larger than FLOAT32_ROWS_BYTES (the real teacher's head) is converted in row slices: the
    products and both gradients equal those of the whole weight converted at once, up to float32 summation
    order (the input's gradient adds the slices' products)."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 24).to(torch.bfloat16).requires_grad_(True)  # [b, s, in]
    weight = torch.randn(40, 24).to(torch.bfloat16).requires_grad_(True)  # [out, in]
    bias = torch.randn(40).to(torch.bfloat16).requires_grad_(True)

    def run():
        for t in (x, weight, bias):
            t.grad = None
        y = numerics._Float32Linear.apply(x, weight, bias)
        (y.float() * torch.linspace(-1, 1, 40)).sum().backward()
        return [y.detach().clone(), x.grad.clone(), weight.grad.clone(), bias.grad.clone()]

    whole = run()
    monkeypatch.setattr(numerics, "FLOAT32_ROWS_BYTES", 4 * 24 * 7)  # 7 rows a slice: 6 slices, the last of 5
    assert len(numerics.weight_row_chunks(weight)) == 6
    sliced = run()
    for a, b in zip(whole, sliced):
        assert a.dtype == b.dtype and torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-2)
    assert torch.equal(whole[2], sliced[2]) and torch.equal(whole[0], sliced[0])  # rows are independent


@pytest.mark.parametrize("metric", ["taylor-abs", "fisher", "taylor-sum"])
def test_the_sums_fold_a_slice_of_rows_at_a_time(tokenizer, seed_records, monkeypatch, metric):
    """Folding each gradient into the float32 sums (and |theta| into them at the end) slice by slice, as a large
    weight is (FLOAT32_ROWS_BYTES), gives exactly the map of the whole-tensor fold: the slices are disjoint."""
    config = SensitivityConfig(metric=metric, samples=2, max_length=64)
    model = bf16_model(tied=True)
    monkeypatch.setattr(numerics, "half_matmuls_are_slow", lambda model: False)  # the folds alone are sliced
    whole = compute_sensitivity(model, tokenizer, seed_records, config)
    monkeypatch.setattr(numerics, "FLOAT32_ROWS_BYTES", 4 * 64 * 3)  # 3 rows of 64 entries a slice
    sliced = compute_sensitivity(model, tokenizer, seed_records, config)
    assert whole.keys() == sliced.keys() and all(torch.equal(whole[k], sliced[k]) for k in whole)
