"""Evaluation on a tiny random Llama with a tokenizer trained in the test (no demo weights needed)."""
import json

import pytest
import torch

from paraknow.core import task_world, tasks
from paraknow.core.data import encode, encode_prompt
from paraknow.core.errors import ParaknowError
from paraknow.runs.evaluate import EvalResult, evaluate, generate_completions, run_eval


@pytest.fixture(scope="module")
def tokenizer():
    from paraknow.demo import build_tokenizer

    records = [r for n in tasks.TASKS for r in tasks.task_records(n, "train")[:150]]
    return build_tokenizer(records, task_world.general_text(100))


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=False,
                         initializer_range=0.3, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def records():
    return (tasks.task_records("arith", "test")[:4] + tasks.task_records("facts", "test")[:4]
            + tasks.task_records("instruct", "test")[:4])


def test_evaluate_returns_loss_accuracy_n(model, tokenizer):
    calls = []
    result = evaluate(model, tokenizer, records(), max_new_tokens=6, batch_size=5,
                      progress=lambda d, t, m: calls.append((d, t)))
    assert isinstance(result, EvalResult)
    assert result.n == 12 and len(result.predictions) == 12
    assert result.accuracy == sum(p["correct"] for p in result.predictions) / 12
    assert [p["correct"] for p in result.predictions] == [
        tasks.score(r, p["prediction"]) for r, p in zip(records(), result.predictions)]
    assert result.loss > 0  # its value is checked against an unbatched computation below
    assert calls and calls[-1][0] == calls[-1][1]
    assert result.to_dict() == {"accuracy": result.accuracy, "loss": result.loss, "n": 12}
    assert not model.training


def test_loss_matches_unbatched(model, tokenizer):
    from paraknow.core.data import per_sample_loss

    recs = records()[:6]
    result = evaluate(model, tokenizer, recs, max_new_tokens=1, batch_size=4)
    losses = []
    for r in recs:
        item = encode(tokenizer, r)
        ids = torch.tensor([item.input_ids])
        with torch.no_grad():
            losses.append(per_sample_loss(model(input_ids=ids).logits, torch.tensor([item.labels])).item())
    assert result.loss == pytest.approx(sum(losses) / len(losses), rel=1e-4)


def test_left_padded_batches_generate_like_single_prompts(model, tokenizer):
    recs = records()
    batched = generate_completions(model, tokenizer, recs, max_new_tokens=5, batch_size=12)
    single = generate_completions(model, tokenizer, recs, max_new_tokens=5, batch_size=1)
    assert batched == single


class Oracle(torch.nn.Module):
    """Wraps a model; `generate` answers from a table of prompt -> completion token ids."""

    def __init__(self, inner, table, pad_id):
        super().__init__()
        self.inner, self.table, self.pad_id = inner, table, pad_id

    def forward(self, **kw):
        return self.inner(**kw)

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            prompt = tuple(i for i, m in zip(ids, mask) if m)
            rows.append(ids + self.table[prompt][:max_new_tokens])
        width = max(len(r) for r in rows)
        return torch.tensor([r + [self.pad_id] * (width - len(r)) for r in rows])


def test_oracle_exact_match_counting(model, tokenizer):
    recs = records()
    eos = tokenizer.eos_token_id
    table = {}
    right = set()
    for i, r in enumerate(recs):
        completion = r["messages"][1]["content"]
        if i % 3 == 0:  # wrong final answer
            if r["task"] == "arith":
                completion = completion.replace(f"is {r['answer']}.", f"is {int(r['answer']) + 1}.")
            elif r["task"] == "facts":
                other = "A" if r["answer"] != "A" else "B"
                completion = completion.replace(f"is {r['answer']}.", f"is {other}.")
            else:
                completion = "Answer: " + r["answer"] + " extra"
        else:
            right.add(i)
        ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [eos, 5, 6]
        table[tuple(encode_prompt(tokenizer, r))] = ids
    oracle = Oracle(model, table, tokenizer.pad_token_id)
    result = evaluate(oracle, tokenizer, recs, max_new_tokens=128, batch_size=5)
    assert [p["correct"] for p in result.predictions] == [i in right for i in range(len(recs))]
    assert result.accuracy == pytest.approx(len(right) / len(recs))
    # generation is cut at eos: the tokens after it never reach the prediction
    assert all(p["prediction"] == tokenizer.decode(
        table[tuple(encode_prompt(tokenizer, recs[p["index"]]))][:-3], skip_special_tokens=True)
        for p in result.predictions)


def test_generic_records_and_text(model, tokenizer):
    generic = [{"prompt": "What is 2 + 2?", "completion": "So the answer is 4."}]
    result = evaluate(model, tokenizer, generic, max_new_tokens=3)
    assert result.n == 1 and result.accuracy == float(tasks.score(generic[0], result.predictions[0]["prediction"]))
    text_only = evaluate(model, tokenizer, [{"text": "The capital of Paan is Lipa."}], max_new_tokens=3)
    assert text_only.accuracy is None and text_only.loss > 0
    with pytest.raises(ParaknowError):
        evaluate(model, tokenizer, [])


def test_run_eval_with_adapter(model, tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    model_dir = tmp_path / "tiny"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records()[:3]))
    base = run_eval(str(model_dir), str(data), max_new_tokens=4)
    assert set(base) == {"accuracy", "loss", "n"} and base["n"] == 3
    peft_model = get_peft_model(type(model)(model.config), LoraConfig(
        r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    adapted = run_eval(str(model_dir), str(data), adapter=str(tmp_path / "adapter"), max_new_tokens=4)
    assert adapted["n"] == 3 and adapted["loss"] != pytest.approx(base["loss"])
    with pytest.raises(ParaknowError, match="adapter"):
        run_eval(str(model_dir), str(data), adapter=str(tmp_path / "missing"))
    assert run_eval(str(model_dir), "task:instruct:seed", max_new_tokens=2)["n"] == 32
