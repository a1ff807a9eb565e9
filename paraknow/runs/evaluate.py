"""Evaluation: completion loss and exact-match accuracy of greedy generations (`paraknow eval`).

- loss: mean over samples of each sample's mean token cross-entropy on its completion
  tokens (the same masking as training; `{"text": ...}` records count every token);
- accuracy: batched greedy generation from the prompt (left-padded), then the final answer
  matched against the reference (`paraknow.core.answers`, `match` = auto|exact|numeric; auto
  compares numbers when the reference is a number). Built-in task records (with `task` and
  `answer`) use that task's extractor for exact matching (`tasks.score`); other records use
  their `answer` field or the final answer of their reference completion. `{"text": ...}`
  records have no reference and are left out of the accuracy (None when no record has one).
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..core.answers import check_mode, final_answer
from ..core.data import collate, encode_all, encode_prompt, per_sample_loss
from ..core.errors import ParaknowError
from ..core.options import option
from ..core.records import split_conversation
from ..core.tasks import score
from ..core.validate import MAX_LENGTH, check_count

Progress = Callable[[int, int, str], None]


@dataclass
class EvalOptions:
    """`eval`'s own options (generation length and matching are TrainConfig's eval fields)."""
    limit: int | None = option(None, "score only the first N records (default: all of them)", type=int)


@dataclass
class EvalResult:
    accuracy: float | None
    loss: float
    n: int
    predictions: list = field(default_factory=list)  # per record: id, prediction, answer, correct

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "loss": self.loss, "n": self.n}


def _device_of(model) -> torch.device:
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    return 0


def reference_answer(record: dict) -> str | None:
    """The answer a generation is compared with (None for `text` records)."""
    if record.get("task") and "answer" in record:
        return str(record["answer"])
    _, completion = split_conversation(record)
    if completion is None:
        return None
    return str(record["answer"]) if "answer" in record else final_answer(completion)


def is_correct(record: dict, generated: str, match: str = "auto") -> bool:
    """Whether the generation's final answer matches the record's reference (`tasks.score`)."""
    return score(record, generated, match)


def completion_losses(model, tokenizer, records: list[dict], batch_size: int = 16,
                      max_length: int = 2048, progress: Progress | None = None) -> list[float]:
    """Per-sample completion loss of each record, in order."""
    items = encode_all(tokenizer, records, max_length)
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    losses = [0.0] * len(items)
    device, pad = _device_of(model), _pad_id(tokenizer)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = {k: v.to(device) for k, v in collate([items[i] for i in idx], pad).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            for i, value in zip(idx, per_sample_loss(logits, batch["labels"]).tolist()):
                losses[i] = value
            if progress:
                progress(min(start + batch_size, len(order)), len(order), "loss")
    return losses


def generate_completions(model, tokenizer, records: list[dict], max_new_tokens: int = 128,
                         batch_size: int = 16, progress: Progress | None = None) -> list[str]:
    """Greedy completions of each record's prompt (left-padded batches), decoded, in order."""
    prompts = [encode_prompt(tokenizer, r) for r in records]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts = [""] * len(prompts)
    device, pad = _device_of(model), _pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(prompts[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids = prompts[i]
                input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                attention[row, width - len(ids):] = 1
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                 max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=pad, eos_token_id=eos,
                                 temperature=None, top_p=None, top_k=None)
            for row, i in enumerate(idx):
                new = out[row, width:].tolist()
                if eos is not None and eos in new:
                    new = new[:new.index(eos)]
                texts[i] = tokenizer.decode(new, skip_special_tokens=True)
            if progress:
                progress(min(start + batch_size, len(order)), len(order), "generating")
    return texts


@contextlib.contextmanager
def merged_weights(model):
    """The model's LoRA adapters merged into its weights for the block (one matmul per projection
    instead of three), the weights restored exactly afterwards (from a host copy: un-merging alone
    would leave rounding in the base). Nothing to do for a model without active adapters."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules()
              if isinstance(m, BaseTunerLayer) and not m.merged and not m.disable_adapters and m.active_adapters]
    saved = [(m.get_base_layer().weight, m.get_base_layer().weight.detach().to("cpu", copy=True)) for m in layers]
    try:
        for layer in layers:
            layer.merge()
        yield model
    finally:
        for layer, (weight, copy) in zip(layers, saved):
            if layer.merged:
                layer.unmerge()
            with torch.no_grad():
                weight.copy_(copy)


def evaluate(model, tokenizer, records: list[dict], max_new_tokens: int = 128, batch_size: int = 16,
             progress: Progress | None = None, max_length: int = 2048, match: str = "auto") -> EvalResult:
    """Loss on every record and greedy answer accuracy (`match`) on those with a reference answer, on
    the model with its adapters merged (`merged_weights`)."""
    check_mode(match)
    if not records:
        raise ParaknowError("nothing to evaluate: the dataset holds no records.")
    was_training = model.training
    model.eval()
    try:
        total = 2 * len(records)

        def loss_progress(done, _n, _msg):
            if progress:
                progress(done, total, "computing loss")

        scorable = [i for i, r in enumerate(records) if reference_answer(r) is not None]

        def gen_progress(done, _n, _msg):
            if progress:
                progress(len(records) + done, len(records) + len(scorable), "generating answers")

        with merged_weights(model):
            losses = completion_losses(model, tokenizer, records, batch_size, max_length, loss_progress)
            texts = generate_completions(model, tokenizer, [records[i] for i in scorable],
                                         max_new_tokens, batch_size, gen_progress) if scorable else []
    finally:
        model.train(was_training)
    predictions, correct = [], 0
    for i, text in zip(scorable, texts):
        ok = is_correct(records[i], text, match)
        correct += ok
        predictions.append({"index": i, "id": records[i].get("id", i), "prediction": text,
                            "answer": reference_answer(records[i]), "correct": bool(ok)})
    accuracy = correct / len(scorable) if scorable else None
    if progress:
        progress(1, 1, "done")
    return EvalResult(accuracy=accuracy, loss=float(sum(losses) / len(losses)), n=len(records),
                      predictions=predictions)


def run_eval(model_ref: str, data_ref: str, adapter: str | None = None, max_new_tokens: int = 128,
             device: str | None = None, batch_size: int = 16, progress: Progress | None = None,
             match: str = "auto", limit: int | None = None) -> dict:
    """`python -m paraknow eval`: load a model (and optional adapter, `lora.attach_adapter`), evaluate a dataset.

    Returns {"accuracy", "loss", "n"}; `limit`: only the first `limit` records.
    """
    from ..core.data import load_records
    from ..core.models import load_model
    from ..transfer.lora import attach_adapter

    check_count("--max-new-tokens", max_new_tokens, maximum=MAX_LENGTH)
    check_mode(match)
    if limit is not None:
        check_count("--limit", limit)
    records = load_records(data_ref)[:limit]
    model, tokenizer = load_model(model_ref, device=device)
    if adapter:
        model = attach_adapter(model, adapter, model_ref)
    return evaluate(model, tokenizer, records, max_new_tokens=max_new_tokens,
                    batch_size=batch_size, progress=progress, match=match).to_dict()
