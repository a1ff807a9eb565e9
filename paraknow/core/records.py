"""Records: the three JSONL shapes, parsed and checked line by line, hashed by content.

  {"messages": [{"role": ..., "content": ...}, ...]}  loss on the last assistant message
  {"prompt": ..., "completion": ...}                   loss on the completion
  {"text": ...}                                        loss on every token

Below the built-in tasks (paraknow.core.tasks builds records) and the tokenisation (paraknow.core.data).
"""
from __future__ import annotations

import hashlib
import json

from .errors import ParaknowError

ROLES = ("system", "user", "assistant")
MAX_RECORDS_BYTES = 200 * 1024 * 1024
MAX_JSON_DEPTH = 64  # a record needs 3 levels; deeper lines are refused before any recursion


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
        if not any(m["content"].strip() for m in messages if m["role"] == "assistant"):
            raise ParaknowError(f"{where}: every assistant message is empty: there is nothing to compute the loss on.")
        return record
    if "prompt" in record or "completion" in record:
        if not isinstance(record.get("prompt"), str) or not isinstance(record.get("completion"), str):
            raise ParaknowError(f"{where}: 'prompt' and 'completion' must both be strings.")
        if not record["completion"].strip():
            raise ParaknowError(f"{where}: 'completion' is empty: there is nothing to compute the loss on.")
        return record
    if "text" in record:
        if not isinstance(record["text"], str):
            raise ParaknowError(f"{where}: 'text' must be a string.")
        if not record["text"].strip():
            raise ParaknowError(f"{where}: 'text' is empty: there is nothing to compute the loss on.")
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


def records_sha256(records: list[dict]) -> str:
    """Content hash of records (canonical JSON), independent of where they came from."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def to_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def split_conversation(record: dict) -> tuple[list[dict], str | None]:
    """(prompt messages, completion text); completion is None for `text` records."""
    if "messages" in record:
        messages = record["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return messages[:last], messages[last]["content"]
    if "prompt" in record:
        return [{"role": "user", "content": record["prompt"]}], record["completion"]
    return [], None
