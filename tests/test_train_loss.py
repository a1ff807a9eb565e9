"""The training loss (paraknow.runs.train_loss): the model's own causal-LM loss, computed with logits only
at the labelled positions -- the same value and the same gradients, with LoRA, with a token budget from
several micro-batches (`num_items`), and with gemma's logit soft-capping. The evaluation loss
(paraknow.runs.labelled.sample_losses, behind evaluate.completion_losses): each sample's loss as the
full logits give it, rows without a label included."""
import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny import TOKENIZER, tiny_llama

from paraknow.core.data import collate, encode_all, per_sample_loss
from paraknow.runs.evaluate import completion_losses
from paraknow.runs.labelled import sample_losses
from paraknow.runs.train_loss import completion_loss


def _batch(records):
    return collate(encode_all(TOKENIZER, records, 256), TOKENIZER.pad_token_id)


def _lora(model):
    torch.manual_seed(0)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"],
                                            init_lora_weights=False))
    return lora.eval()  # no dropout: both losses see the same function


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("num_items", [None, 57])
def test_same_loss_and_gradients_as_the_models_own(seed_records, num_items):
    model = _lora(tiny_llama())
    inputs = _batch(seed_records)
    ours = completion_loss(model, inputs, num_items)
    extra = {} if num_items is None else {"num_items_in_batch": num_items}
    theirs = model(**inputs, **extra).loss
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    g_ours, g_theirs = _grads(model, completion_loss(model, inputs, num_items)), _grads(model, model(**inputs, **extra).loss)
    assert g_ours.keys() == g_theirs.keys() and len(g_ours) > 0
    for name in g_ours:
        torch.testing.assert_close(g_ours[name], g_theirs[name], rtol=1e-4, atol=1e-6)


def test_prompt_tokens_do_not_count(seed_records):
    """Changing a prompt token's label target does not matter; changing a completion target does."""
    model = _lora(tiny_llama())
    inputs = _batch(seed_records[:2])
    base = completion_loss(model, inputs).item()
    changed = {k: v.clone() for k, v in inputs.items()}
    completion = (changed["labels"][0] != -100).nonzero()[-1].item()
    changed["labels"][0, completion] = (changed["labels"][0, completion] + 1) % 50
    assert completion_loss(model, changed).item() != pytest.approx(base)


def test_soft_capped_logits_as_gemma2_computes_them(seed_records):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=len(TOKENIZER), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=2.0,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = Gemma2ForCausalLM(config).eval()
    inputs = _batch(seed_records)
    assert completion_loss(model, inputs).item() == pytest.approx(model(**inputs).loss.item(), rel=1e-5)


def _full_logits_losses(model, inputs):
    """The old way: every position's logits [b, s, V], then per_sample_loss."""
    return per_sample_loss(model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits,
                           inputs["labels"])


def test_the_evaluation_loss_per_sample_and_its_gradients_as_from_the_full_logits(seed_records):
    model = _lora(tiny_llama())
    inputs = _batch(seed_records[:5])
    inputs["labels"][2] = -100  # a row with no label at all: 0, as per_sample_loss gives it
    ours, theirs = sample_losses(model, inputs), _full_logits_losses(model, inputs)
    assert ours.shape == (5,) and ours[2].item() == 0.0 and bool((ours[[0, 1, 3, 4]] > 0).all())
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    weights = torch.arange(1.0, 6.0)  # a weighted sum: a row's loss landing on another row would show
    g_ours = _grads(model, (sample_losses(model, inputs) * weights).sum())
    g_theirs = _grads(model, (_full_logits_losses(model, inputs) * weights).sum())
    assert g_ours.keys() == g_theirs.keys() and len(g_ours) > 0
    for name in g_ours:
        torch.testing.assert_close(g_ours[name], g_theirs[name], rtol=1e-4, atol=1e-6)


def test_completion_losses_in_record_order_as_from_the_full_logits(seed_records):
    """Batches sorted by length and padded: each record still gets its own loss, in order."""
    model = tiny_llama()
    records = seed_records[:7]
    with torch.no_grad():
        expected = [_full_logits_losses(model, _batch([r])).item() for r in records]
    assert completion_losses(model, TOKENIZER, records, batch_size=3) == pytest.approx(expected, rel=1e-5)
