"""Evaluation on merged weights (paraknow.runs.evaluate.merged_weights): the same losses and answers as the
model with its adapters unmerged, and afterwards the weights bit for bit as before (training goes on)."""
import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny import TOKENIZER, tiny_llama

from paraknow.runs.evaluate import completion_losses, evaluate, generate_completions, merged_weights


def _model():
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens", "lm_head"],
                        init_lora_weights=False)
    return get_peft_model(tiny_llama(), config).eval()


def test_same_losses_and_answers_and_the_weights_restored(seed_records):
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = completion_losses(model, TOKENIZER, seed_records)
    texts = generate_completions(model, TOKENIZER, seed_records, max_new_tokens=8)
    with merged_weights(model):
        assert all(m.merged for m in model.modules() if hasattr(m, "merged_adapters"))
        merged_losses = completion_losses(model, TOKENIZER, seed_records)
        merged_texts = generate_completions(model, TOKENIZER, seed_records, max_new_tokens=8)
        changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
        assert any("base_layer" in n for n in changed)  # the merge did change the base weights
    assert merged_losses == pytest.approx(losses, rel=1e-4) and merged_texts == texts
    assert not any(m.merged for m in model.modules() if hasattr(m, "merged_adapters"))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    result = evaluate(model, TOKENIZER, seed_records, max_new_tokens=8, batch_size=64)
    assert result.loss == pytest.approx(sum(losses) / len(losses), rel=1e-4)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_a_plain_model_is_left_alone(seed_records):
    model = tiny_llama()
    with merged_weights(model) as same:
        assert same is model
