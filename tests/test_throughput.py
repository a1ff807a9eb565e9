"""A cell's throughput without changing what it learns or predicts (issue 24, docs/study.md "Throughput"):
length-bucketed micro-batches (every optimiser step sees the same rows as the plain shuffle; only the
order of the sums changes) and greedy decoding whose finished rows leave the batch (the tokens of
`generate`)."""
import json
import random

import pytest
import torch
from accelerate.data_loader import SeedableRandomSampler
from test_train import save_student, write_data
from tiny import SEED_RECORDS, TOKENIZER, tiny_llama
from transformers import Trainer

from paraknow.runs.evaluate import _greedy_is_argmax, evaluate, greedy_rows
from paraknow.runs.train import train
from paraknow.runs.train_config import TrainConfig
from paraknow.runs.train_loss import BatchSortedSampler, CompletionTrainer


def _shuffle(n, seed, epoch):
    sampler = SeedableRandomSampler(data_source=range(n), data_seed=seed)
    sampler.set_epoch(epoch)
    return sampler


@pytest.mark.parametrize("n, group", [(40, 8), (37, 8), (12, 12)])
def test_each_optimiser_batch_keeps_its_rows_sorted_by_length(n, group):
    lengths = [random.Random(i).randint(3, 60) for i in range(n)]
    for epoch in (0, 1):
        plain = list(_shuffle(n, 3, epoch))
        bucketed = BatchSortedSampler(_shuffle(n, 3, 0), lengths, group)
        bucketed.set_epoch(epoch)
        order = list(bucketed)
        assert len(order) == len(bucketed) == n
        for start in range(0, n, group):
            ours, theirs = order[start:start + group], plain[start:start + group]
            assert sorted(ours) == sorted(theirs)  # the same rows in each optimiser batch
            assert [lengths[i] for i in ours] == sorted(lengths[i] for i in theirs)
    assert list(_shuffle(n, 3, 0)) != list(_shuffle(n, 3, 1))  # each epoch its own shuffle


def _run(tmp_path, name):
    data = write_data(tmp_path, SEED_RECORDS * 2)  # 16 records of 9 to 60 tokens
    config = TrainConfig(student=str(tmp_path / "student"), data=str(data), out=str(tmp_path / name), epochs=2,
                         batch=8, micro_batch=2, rank=4, alpha=8, max_length=128, device="cpu", dropout=0.0,
                         lr=3e-3)
    outcome = train(config)
    losses = [json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    result = evaluate(outcome.model, outcome.tokenizer, SEED_RECORDS, max_new_tokens=12, batch_size=4)
    return losses, result


def test_a_fixed_cell_learns_and_predicts_as_with_the_plain_shuffle(tmp_path, monkeypatch):
    """Without dropout (the one random stream a micro-batch's make-up changes), bucketing changes only the
    summation order: the same loss at every step, the same predictions and eval loss at the end."""
    save_student(tmp_path)
    bucketed_losses, bucketed = _run(tmp_path, "bucketed")
    monkeypatch.setattr(CompletionTrainer, "_get_train_sampler", Trainer._get_train_sampler)
    plain_losses, plain = _run(tmp_path, "plain")
    assert len(bucketed_losses) == len(plain_losses) == 4
    assert bucketed_losses == pytest.approx(plain_losses, rel=1e-4)
    assert bucketed_losses[-1] < bucketed_losses[0]  # it learnt something: the comparison means something
    assert [p["prediction"] for p in bucketed.predictions] == [p["prediction"] for p in plain.predictions]
    assert bucketed.loss == pytest.approx(plain.loss, rel=1e-4)


def _left_padded(prompts, pad):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # [b, w]
    return ids, (ids != pad).long()


def _generate(model, ids, mask, eos, new_tokens):
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0, eos_token_id=eos)[:, ids.size(1):].tolist()
    return [row[:row.index(eos) + 1] if eos in row else row for row in out]


def test_rows_leave_the_batch_at_eos_with_the_tokens_of_generate():
    model = tiny_llama(seed=5)
    prompts = [TOKENIZER(text)["input_ids"] for text in ("What is 2 plus 3?", "Hi", "a b c d e f g", "x" * 20, "?!")]
    ids, mask = _left_padded(prompts, 0)
    assert _greedy_is_argmax(model)
    free = _generate(model, ids, mask, None, 16)
    eos = free[0][3]  # a token some row emits early: rows then finish at different steps
    expected = _generate(model, ids, mask, eos, 16)
    with torch.inference_mode():
        ours = greedy_rows(model, ids, mask, 16, eos, 0)
    assert ours == expected
    assert len({len(row) for row in ours}) > 1  # some rows stopped while others went on


def test_a_generation_config_that_changes_greedy_choices_is_honoured():
    model = tiny_llama(seed=5)
    model.generation_config.repetition_penalty = 1.5
    ids, mask = _left_padded([TOKENIZER(text)["input_ids"] for text in ("abcabc", "What is 7?")], 0)
    assert not _greedy_is_argmax(model)
    with torch.inference_mode():
        assert greedy_rows(model, ids, mask, 10, 2, 0) == _generate(model, ids, mask, 2, 10)
