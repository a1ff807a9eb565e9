"""Evaluation: completion loss and exact-match accuracy of greedy generations (`paraknow eval`).

- loss: mean over samples of each sample's mean token cross-entropy on its completion
  tokens (the same masking as training; `{"text": ...}` records count every token), the LM head
  applied at the labelled positions only (`paraknow.runs.labelled.sample_losses`);
- accuracy: batched greedy generation from the prompt (left-padded), then the final answer
  matched against the reference (`paraknow.core.answers`, `match` = auto|exact|numeric; auto
  compares numbers when the reference is a number). Built-in task records (with `task` and
  `answer`) use that task's extractor for exact matching (`tasks.score`); other records use
  their `answer` field or the final answer of their reference completion. `{"text": ...}`
  records have no reference and are left out of the accuracy (None when no record has one).
"""
from __future__ import annotations

import contextlib
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..core.answers import check_mode, final_answer
from ..core.data import collate, encode_all, encode_prompt
from ..core.errors import ParaknowError
from ..core.options import option
from ..core.records import split_conversation
from ..core.tasks import score
from ..core.validate import MAX_LENGTH, check_count
from .labelled import causal_lm, sample_losses

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
            for i, value in zip(idx, sample_losses(model, batch).tolist()):  # logits at the labels only
                losses[i] = value
            if progress:
                progress(min(start + batch_size, len(order)), len(order), "loss")
    return losses


def generate_completions(model, tokenizer, records: list[dict], max_new_tokens: int = 128,
                         batch_size: int = 16, progress: Progress | None = None) -> list[str]:
    """Greedy completions of each record's prompt (left-padded batches of similar length), decoded,
    in order. A row stops at its end-of-sequence token and leaves the batch (`greedy_rows`)."""
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
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)  # [b, w], left-padded
            attention = torch.zeros((len(idx), width), dtype=torch.long)  # [b, w]
            for row, i in enumerate(idx):
                ids = prompts[i]
                input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                attention[row, width - len(ids):] = 1
            rows = greedy_rows(model, input_ids.to(device), attention.to(device), max_new_tokens, eos, pad)
            for i, new in zip(idx, rows):
                if eos is not None and eos in new:
                    new = new[:new.index(eos)]
                texts[i] = tokenizer.decode(new, skip_special_tokens=True)
            if progress:
                progress(min(start + batch_size, len(order)), len(order), "generating")
    return texts


def greedy_rows(model, input_ids, attention, max_new_tokens: int, eos: int | None, pad: int) -> list[list[int]]:
    """The greedy continuation of each left-padded row (input_ids, attention [b, w]), up to and with its
    first `eos`: what `model.generate(do_sample=False)` gives, with a KV cache, but a row that has
    emitted `eos` leaves the batch at once (its cache rows dropped), so finished rows cost nothing.
    Falls back to `generate` where the model's generation config changes greedy choices (a repetition
    penalty, banned words, ...), which this loop does not apply, and for a model without one."""
    if _greedy_is_argmax(model):
        return _greedy_shrinking(model, input_ids, attention, max_new_tokens, eos)
    out = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                         do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=eos,
                         temperature=None, top_p=None, top_k=None)
    rows = out[:, input_ids.size(1):].tolist()  # [b, new]: rows that ended early padded after their eos
    return [row[:row.index(eos) + 1] if eos in row else row for row in rows]


# generation-config fields whose non-default values make `generate` choose other tokens than the argmax
_LOGIT_PROCESSORS = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_repetition_penalty": 1.0,
                     "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None,
                     "forced_bos_token_id": None, "forced_eos_token_id": None, "min_length": 0,
                     "min_new_tokens": None, "sequence_bias": None, "exponential_decay_length_penalty": None,
                     "renormalize_logits": False}


def _greedy_is_argmax(model) -> bool:
    """A transformers model whose greedy `generate` takes the argmax at every step (not any other
    object with a `generate`)."""
    config = getattr(model, "generation_config", None)
    return config is not None and all(getattr(config, k, v) in (v, None) for k, v in _LOGIT_PROCESSORS.items())


def _greedy_shrinking(model, input_ids, attention, max_new_tokens: int, eos: int | None) -> list[list[int]]:
    from transformers import DynamicCache

    lm = causal_lm(model)
    cache = DynamicCache(config=lm.config)
    cache_arg = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
    rows: list[list[int]] = [[] for _ in range(input_ids.size(0))]
    live = torch.arange(input_ids.size(0), device=input_ids.device)  # [n]: the batch rows still generating
    positions = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 1)  # [b, w], as `generate` numbers them
    logits = lm(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                logits_to_keep=1, **{cache_arg: cache}).logits[:, -1]  # [b, V]
    last = positions[:, -1]  # [n]
    for step in range(max_new_tokens):
        token = logits.argmax(-1)  # [n]
        for row, t in zip(live.tolist(), token.tolist()):
            rows[row].append(t)
        keep = (token != eos).nonzero().squeeze(1) if eos is not None else None  # [n'] rows going on
        if step == max_new_tokens - 1 or (keep is not None and keep.numel() == 0):
            break
        if keep is not None and keep.numel() < token.numel():
            cache.batch_select_indices(keep)
            live, token, attention, last = live[keep], token[keep], attention[keep], last[keep]
        attention = torch.cat([attention, attention.new_ones(attention.size(0), 1)], 1)  # [n, w + step + 1]
        last = last + 1
        logits = lm(input_ids=token[:, None], attention_mask=attention, position_ids=last[:, None],
                    use_cache=True, logits_to_keep=1, **{cache_arg: cache}).logits[:, -1]  # [n, V]
    return rows


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
