"""Datasets: JSONL files in three shapes or built-in tasks, tokenised with completion-only labels.

Record shapes:
  {"messages": [{"role": ..., "content": ...}, ...]}  loss on the last assistant message
  {"prompt": ..., "completion": ...}                   loss on the completion
  {"text": ...}                                        loss on every token
Built-in tasks are named `task:NAME[:SPLIT]` (split defaults to `train`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ParaknowError

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
MAX_RECORDS_BYTES = 200 * 1024 * 1024
MAX_JSON_DEPTH = 64  # a record needs 3 levels; deeper lines are refused before any recursion


@dataclass
class Encoded:
    """One tokenised sample: `labels` is `input_ids` with prompt tokens set to -100."""
    input_ids: list[int]
    labels: list[int]
    prompt_len: int

    @property
    def n_target(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def _check_record(record, where: str) -> dict:
    if not isinstance(record, dict):
        raise ParaknowError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ParaknowError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects.")
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("content"), str):
                raise ParaknowError(f"{where}: message {i} needs a 'role' in {ROLES} and a string 'content'.")
        if not any(m["role"] == "assistant" for m in messages):
            raise ParaknowError(f"{where}: 'messages' has no assistant message to compute the loss on.")
        return record
    if "prompt" in record or "completion" in record:
        if not isinstance(record.get("prompt"), str) or not isinstance(record.get("completion"), str):
            raise ParaknowError(f"{where}: 'prompt' and 'completion' must both be strings.")
        return record
    if "text" in record:
        if not isinstance(record["text"], str):
            raise ParaknowError(f"{where}: 'text' must be a string.")
        return record
    raise ParaknowError(f"{where}: each line needs 'messages', 'prompt'+'completion', or 'text' "
                        f"(found keys: {', '.join(sorted(record)) or 'none'}).")


_TOO_DEEP = object()


def _depth(value) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in children)
    return deepest


def parse_jsonl(text: str, source: str = "input") -> list[dict]:
    """Parse JSONL text into validated records; any bad line raises with its line number."""
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ParaknowError(f"{source} line {lineno}: not valid JSON ({exc.msg}). "
                                "Each line must be one JSON object.") from None
        except RecursionError:
            record = _TOO_DEEP  # nested too deep for the parser: reported just below
        if record is _TOO_DEEP or (line.count("[") + line.count("{") > MAX_JSON_DEPTH
                                   and _depth(record) > MAX_JSON_DEPTH):
            raise ParaknowError(f"{source} line {lineno}: JSON nested deeper than {MAX_JSON_DEPTH} levels; "
                                "a record is one flat object of messages, prompt+completion or text.")
        records.append(_check_record(record, f"{source} line {lineno}"))
    if not records:
        raise ParaknowError(f"{source} holds no records: give a JSONL file with one JSON object per line.")
    return records


def parse_task_ref(ref: str) -> tuple[str, str]:
    parts = ref.split(":")
    if len(parts) not in (2, 3) or not parts[1]:
        raise ParaknowError(f"bad task reference '{ref}': use task:NAME or task:NAME:SPLIT.")
    return parts[1], parts[2] if len(parts) == 3 else "train"


def load_records(ref: str) -> list[dict]:
    """Records of a dataset reference: `task:NAME[:SPLIT]` or a JSONL file path."""
    ref = (ref or "").strip()
    if ref.startswith("task:"):
        from .tasks import task_records

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


def records_sha256(records: list[dict]) -> str:
    """Content hash of records (canonical JSON), independent of where they came from."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def to_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


# ---------------------------------------------------------------------------------------
# Formatting and tokenisation


def split_conversation(record: dict) -> tuple[list[dict], str | None]:
    """(prompt messages, completion text); completion is None for `text` records."""
    if "messages" in record:
        messages = record["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return messages[:last], messages[last]["content"]
    if "prompt" in record:
        return [{"role": "user", "content": record["prompt"]}], record["completion"]
    return [], None


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
