"""Datasets: JSONL files in three shapes or built-in tasks, tokenised with completion-only labels.

Record shapes:
  {"messages": [{"role": ..., "content": ...}, ...]}  loss on the last assistant message
  {"prompt": ..., "completion": ...}                   loss on the completion
  {"text": ...}                                        loss on every token
Built-in tasks are named `task:NAME[:SPLIT]` (split defaults to `train`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ParaknowError
from .records import MAX_RECORDS_BYTES, parse_jsonl, split_conversation
from .tasks import task_records

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """One tokenised sample: `labels` is `input_ids` with prompt tokens set to -100."""
    input_ids: list[int]
    labels: list[int]
    prompt_len: int

    @property
    def n_target(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def parse_task_ref(ref: str) -> tuple[str, str]:
    parts = ref.split(":")
    if len(parts) not in (2, 3) or not parts[1]:
        raise ParaknowError(f"bad task reference '{ref}': use task:NAME or task:NAME:SPLIT.")
    return parts[1], parts[2] if len(parts) == 3 else "train"


def load_records(ref: str) -> list[dict]:
    """Records of a dataset reference: `task:NAME[:SPLIT]` or a JSONL file path."""
    ref = (ref or "").strip()
    if ref.startswith("task:"):
        return task_records(*parse_task_ref(ref))
    path = Path(ref).expanduser()
    if not ref or not path.is_file():
        raise ParaknowError(f"data file not found: '{ref}'. Give a JSONL file or a built-in task "
                            "such as task:arith:seed.")
    if path.stat().st_size > MAX_RECORDS_BYTES:
        raise ParaknowError(f"{ref} is larger than {MAX_RECORDS_BYTES >> 20} MB; use a smaller file.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ParaknowError(f"{ref} is not UTF-8 text; save it as UTF-8 JSONL.") from None
    return parse_jsonl(text, source=path.name)


# ---------------------------------------------------------------------------------------
# Formatting and tokenisation


def _fallback_prompt(messages: list[dict]) -> str:
    """The official code's format: `<|role|>\n{content.strip()}\n\n` per message, then `<|assistant|>\n`."""
    return "".join(f"<|{m['role']}|>\n{m['content'].strip()}\n\n" for m in messages) + "<|assistant|>\n"


def format_prompt(tokenizer, messages: list[dict]) -> tuple[str, bool]:
    """Prompt text ending where the assistant starts; bool = whether a chat template was used."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text, True
    return _fallback_prompt(messages), False


def _completion_text(tokenizer, messages, completion, prompt_text, templated) -> str:
    if templated:
        full = tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": completion}], tokenize=False)
        if full.startswith(prompt_text):
            return full[len(prompt_text):]
    return completion.strip() + (tokenizer.eos_token or "")


def encode_prompt(tokenizer, record: dict) -> list[int]:
    """Token ids of the prompt only (for generation)."""
    messages, _ = split_conversation(record)
    text, templated = format_prompt(tokenizer, messages)
    return tokenizer(text, add_special_tokens=not templated)["input_ids"]


def encode(tokenizer, record: dict, max_length: int = 2048) -> Encoded:
    """Tokenise one record as the official code does: the whole text (prompt + completion) at
    once, then the first len(tokens of the prompt alone) labels masked with -100.

    Tokenising the joined text gives the completion the tokens the model produces at generation
    time (a SentencePiece/Metaspace tokenizer splits a completion tokenised on its own
    differently, e.g. 'A','n','swer:' instead of '▁Answer:').
    """
    messages, completion = split_conversation(record)
    if completion is None:  # {"text": ...}: loss on every token
        ids = tokenizer(record["text"], add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        ids = ids[:max_length]
        return Encoded(ids, list(ids), 0)
    prompt_text, templated = format_prompt(tokenizer, messages)
    full_text = prompt_text + _completion_text(tokenizer, messages, completion, prompt_text, templated)
    n_prompt = len(tokenizer(prompt_text, add_special_tokens=not templated)["input_ids"])
    ids = tokenizer(full_text, add_special_tokens=not templated)["input_ids"][:max_length]
    n_masked = min(n_prompt, len(ids))
    labels = [IGNORE_INDEX] * n_masked + ids[n_masked:]
    return Encoded(ids, labels, n_masked)


def encode_all(tokenizer, records: list[dict], max_length: int = 2048) -> list[Encoded]:
    """Encode records, dropping none silently: a record with no target token left is an error."""
    encoded = []
    for i, record in enumerate(records):
        item = encode(tokenizer, record, max_length)
        if item.n_target == 0:
            raise ParaknowError(f"sample {i + 1} has no completion tokens left after truncation to "
                                f"{max_length} tokens; raise --max-length or shorten its prompt.")
        encoded.append(item)
    return encoded


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids/attention_mask/labels, each [batch, max_len]."""
    width = max(len(x.input_ids) for x in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        input_ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def per_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each next-token prediction, as transformers shifts them; 0 where ignored.

    logits [batch, seq, vocab], labels [batch, seq] -> [batch, seq-1] (position t predicts labels[t+1])
    """
    shift_logits = logits[:, :-1].float()  # [b, s-1, V]
    shift_labels = labels[:, 1:]  # [b, s-1]
    return torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="none").view_as(shift_labels)  # [b, s-1]


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy of each sample over its target tokens, as transformers shifts them.

    logits [batch, seq, vocab], labels [batch, seq] -> [batch]
    """
    n_tokens = (labels[:, 1:] != IGNORE_INDEX).sum(1).clamp(min=1)
    return per_token_loss(logits, labels).sum(1) / n_tokens
