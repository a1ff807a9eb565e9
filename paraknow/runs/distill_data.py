"""Sequence KD data: a teacher's greedy completions of a dataset's prompts (`paraknow distill-data`).

Each record keeps everything but its completion, which becomes the teacher's greedy answer to the
record's prompt -- the same formatting and decoding as `paraknow generate` (`evaluate.generate_completions`,
left-padded batches). The result is cached by content under cache/distill/<key>/ (the teacher's weights,
the records, the generation length): `records.jsonl` and `cost.json` (what the generation cost the teacher,
reported again by every run that reuses it, since that is what the method costs).
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from ..core.errors import ParaknowError
from ..core.fsio import (atomic_directory, atomic_write_json, atomic_write_text, check_writable_parent, output_lock,
    sha256_bytes)
from ..core.records import parse_jsonl, records_sha256, split_conversation, to_jsonl
from ..core.validate import check_count
from .distill import TeacherCost, n_params

CACHE_KIND = "distill"
RECORDS_FILE, COST_FILE = "records.jsonl", "cost.json"


def with_completion(record: dict, completion: str) -> dict:
    """The record with its completion (the last assistant message, or `completion`) replaced."""
    out = copy.deepcopy(record)
    if "messages" in out:
        last = max(i for i, m in enumerate(out["messages"]) if m["role"] == "assistant")
        out["messages"][last]["content"] = completion
    else:
        out["completion"] = completion
    return out


def _check_prompts(records: list[dict]) -> None:
    for i, record in enumerate(records):
        if split_conversation(record)[1] is None:
            raise ParaknowError(f"record {i + 1} is plain text (no prompt to complete): sequence KD needs "
                                "records with messages or prompt+completion.")


def generate_records(teacher, tokenizer, records: list[dict], max_new_tokens: int,
                     batch_size: int) -> tuple[list[dict], TeacherCost]:
    """The records with the teacher's greedy completions, and what generating them cost."""
    import torch

    from ..core.data import encode_prompt
    from .evaluate import generate_completions

    _check_prompts(records)
    start = time.perf_counter()
    texts = generate_completions(teacher.eval(), tokenizer, records, max_new_tokens, batch_size)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    # tokens through the teacher: each prompt once, then each generated token with the KV cache (the answer
    # re-tokenised, plus its EOS unless the length limit cut it)
    tokens = sum(len(encode_prompt(tokenizer, r)) +
                 min(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1, max_new_tokens)
                 for r, t in zip(records, texts))
    cost = TeacherCost()
    cost.add_forward(n_params(teacher), tokens, seconds)
    return [with_completion(r, t) for r, t in zip(records, texts)], cost


def cache_key(fingerprint: str, records: list[dict], max_new_tokens: int) -> str:
    payload = {"teacher": fingerprint, "data": records_sha256(records), "max_new_tokens": max_new_tokens}
    return sha256_bytes(json.dumps(payload, sort_keys=True).encode())[:32]


def teacher_records(teacher_ref: str, records: list[dict], max_new_tokens: int, batch_size: int,
                    device: str | None = None, dtype: str | None = None) -> tuple[list[dict], TeacherCost]:
    """The records with `teacher_ref`'s greedy completions (cached by content) and their teacher cost."""
    from ..core.cache import touch
    from ..core.models import load_model, model_fingerprint
    from ..core.paths import cache_dir

    _check_prompts(records)
    teacher, tokenizer = load_model(teacher_ref, dtype=dtype, device=device)
    entry = cache_dir(CACHE_KIND) / cache_key(model_fingerprint(teacher), records, max_new_tokens)
    with output_lock(entry):
        if not (entry / COST_FILE).is_file():
            distilled, cost = generate_records(teacher, tokenizer, records, max_new_tokens, batch_size)
            with atomic_directory(entry) as tmp:
                atomic_write_text(Path(tmp) / RECORDS_FILE, to_jsonl(distilled))
                atomic_write_json(Path(tmp) / COST_FILE, cost.to_dict())
        touch(entry)
        distilled = parse_jsonl((entry / RECORDS_FILE).read_text(encoding="utf-8"), source=str(entry))
        cost = TeacherCost(**json.loads((entry / COST_FILE).read_text()))
    return distilled, cost


def run_distill_data(teacher_ref: str, data_ref: str, out, max_new_tokens: int, batch_size: int,
                     device: str | None = None) -> dict:
    """`python -m paraknow distill-data`: write FILE.jsonl atomically; returns a one-line summary."""
    from ..core.data import load_records

    check_count("max_new_tokens", max_new_tokens)
    check_count("batch", batch_size)
    out = Path(out).expanduser()
    if out.is_dir():
        raise ParaknowError(f"--out {out} is a directory; give a .jsonl file path.")
    if out.suffix != ".jsonl":
        raise ParaknowError(f"--out {out} must end in .jsonl (the teacher's completions are JSON lines).")
    check_writable_parent(out)
    if out.exists():  # a data file of the user's, maybe the input itself: never replaced
        raise ParaknowError(f"--out {out} already exists; paraknow never replaces a file it may not have made: "
                            "choose a new .jsonl name, or remove it first.")
    records = load_records(data_ref)
    distilled, cost = teacher_records(teacher_ref, records, max_new_tokens, batch_size, device)
    atomic_write_text(out, to_jsonl(distilled))
    return {"out": str(out), "records": len(distilled), **cost.to_dict()}


def distilled_records(config, records: list[dict]) -> tuple[list[dict], TeacherCost | None]:
    """A `--distill sequences` run's training records (the teacher's completions, as long as evaluation
    answers: --eval-max-new-tokens) and their teacher cost; other runs' records unchanged, None."""
    from .train_model import train_device

    if config.distill != "sequences":
        return records, None
    device = train_device(config)
    return teacher_records(config.distill_teacher, records, config.eval_max_new_tokens, config.eval_batch,
                           device if device.startswith("cuda") else None, config.dtype)
