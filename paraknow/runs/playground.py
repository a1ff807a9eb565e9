"""One prompt through several models: greedy completions, per-token losses of a reference, word diffs.

The prompt is a user turn formatted exactly as the data is (`data.encode_prompt`: the chat
template when the tokenizer has one, else the `<|user|>` fallback), so what a model answers
here is what evaluation scores. Used by `python -m paraknow generate` and the Playground page.
"""
from __future__ import annotations

import difflib
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from ..core.data import IGNORE_INDEX, encode, per_token_loss
from ..core.errors import ParaknowError
from ..core.records import split_conversation
from ..core.validate import MAX_LENGTH, check_count
from ..transfer.lora import MANIFEST_FILE
from .evaluate import generate_completions, is_correct

DEFAULT_MAX_NEW_TOKENS = 128
LOSS_SCALE = 5.0  # nats at which a token is drawn fully red (probability e^-5 ~ 0.7 %)


class TokenLoss(NamedTuple):
    """One completion token and the model's cross-entropy (nats) for predicting it."""
    token: str
    loss: float


class DiffPiece(NamedTuple):
    """A run of words that both texts share (`same`) or that only the first / second has."""
    kind: str  # "same" | "removed" (only in the first) | "added" (only in the second)
    text: str


def user_record(prompt: str, completion: str = "") -> dict:
    """The record of one user turn (and an optional reference completion)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ParaknowError("the prompt is empty: give the text of a user turn.")
    return {"prompt": prompt, "completion": completion}


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> str:
    """Greedy completion of `prompt` as a user turn (the model in eval mode: deterministic)."""
    check_count("--max-new-tokens", max_new_tokens, maximum=MAX_LENGTH)
    return generate_completions(model, tokenizer, [user_record(prompt)], max_new_tokens, batch_size=1)[0]


def token_losses(model, tokenizer, prompt: str, reference: str, max_length: int = 2048) -> list[TokenLoss]:
    """Cross-entropy of every token of `reference` as the completion of `prompt`.

    The tokens and the masking are training's (`data.encode`: prompt and completion tokenised
    together, the completion ends with EOS in the fallback format), so their mean is the
    sample's completion loss in `evaluate.completion_losses`.
    """
    if not reference.strip():
        raise ParaknowError("the reference completion is empty: give the answer to score.")
    item = encode(tokenizer, user_record(prompt, reference), max_length)
    if item.n_target == 0:
        raise ParaknowError(f"the prompt fills all {max_length} tokens: shorten it.")
    device = model.get_input_embeddings().weight.device
    input_ids = torch.tensor([item.input_ids], device=device)  # [1, seq]
    labels = torch.tensor([item.labels], device=device)  # [1, seq]
    with torch.inference_mode():
        losses = per_token_loss(model(input_ids=input_ids).logits, labels)[0]  # [seq-1]
    targets = labels[0, 1:]  # [seq-1]: what position t predicts
    return [TokenLoss(tokenizer.decode([int(t)]), float(loss))
            for t, loss in zip(targets.tolist(), losses.tolist()) if t != IGNORE_INDEX]


def run_generate(model_ref: str, prompt: str, adapter: str | None = None,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, device: str | None = None) -> str:
    """`python -m paraknow generate`: load a model (and optional adapter), complete one prompt."""
    from ..core.models import load_model
    from ..transfer.lora import attach_adapter

    user_record(prompt)  # check the input before loading anything
    check_count("--max-new-tokens", max_new_tokens, maximum=MAX_LENGTH)
    model, tokenizer = load_model(model_ref, device=device)
    if adapter:
        model = attach_adapter(model, adapter, model_ref)
    return generate_text(model.eval(), tokenizer, prompt, max_new_tokens)


@dataclass
class Output:
    """What one model does with the prompt: its greedy completion and the reference's token losses."""
    name: str
    text: str
    correct: bool | None  # the completion's final answer against the reference (None: no reference)
    losses: list[TokenLoss] = field(default_factory=list)  # empty without a reference

    @property
    def mean_loss(self) -> float | None:
        return sum(x.loss for x in self.losses) / len(self.losses) if self.losses else None


def task_item(task: str, index: int, split: str = "test") -> tuple[dict, str, str]:
    """(record, prompt, reference completion) of one built-in task item."""
    from ..core.tasks import task_records

    records = task_records(task, split)
    if not 0 <= index < len(records):
        raise ParaknowError(f"task:{task}:{split} has items 0 to {len(records) - 1}; pick one of them.")
    messages, reference = split_conversation(records[index])
    return records[index], messages[-1]["content"], reference


def compare_models(models: list[tuple[str, object, object]], prompt: str, reference: str = "",
                   max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, record: dict | None = None) -> list[Output]:
    """Every (name, model, tokenizer) on one prompt: greedy completion, and with a reference its
    per-token losses and whether the completion's answer matches it (`record`: the item to score
    against, e.g. a built-in test item with its `answer`; default: the prompt and reference)."""
    reference = reference or ""
    scored = record if record is not None else user_record(prompt, reference)
    outputs = []
    for name, model, tokenizer in models:
        text = generate_text(model, tokenizer, prompt, max_new_tokens)
        has_reference = bool(reference.strip())
        outputs.append(Output(name, text, is_correct(scored, text) if has_reference else None,
                              token_losses(model, tokenizer, prompt, reference) if has_reference else []))
    return outputs


@dataclass
class AdapterChoice:
    """An adapter the student can be run with: a PKT export or a trained run's adapter/."""
    name: str  # "export NAME" | "run ID"
    detail: str
    path: str
    student: str | None  # the student it was made for (None: unknown)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.detail})"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def adapter_choices(student_ref: str | None = None) -> list[AdapterChoice]:
    """Exports under cache/exports/ and finished runs' adapters under cache/runs/ (newest first),
    only those made for `student_ref` (or for an unknown student) when it is given."""
    from ..core.paths import cache_dir
    from ..transfer.lora import ADAPTER_CONFIG
    from .jobs import list_runs

    exports = []
    for d in cache_dir("exports").iterdir():
        manifest = _read_json(d / MANIFEST_FILE)
        if d.name.startswith(".") or not manifest or not (d / ADAPTER_CONFIG).is_file():
            continue
        exports.append((manifest.get("created", ""), AdapterChoice(
            f"export {d.name}", f"{manifest.get('mode')}, rank {manifest.get('rank')}", str(d),
            manifest.get("student"))))
    choices = [c for _, c in sorted(exports, key=lambda e: e[0], reverse=True)]
    for run in list_runs(resume_queue=False):
        adapter = run.run_dir / "adapter"
        if (adapter / ADAPTER_CONFIG).is_file():
            accuracy = (run.final_eval or {}).get("accuracy")
            scored = f", test accuracy {accuracy:.1%}" if accuracy is not None else ""
            choices.append(AdapterChoice(f"run {run.run_id}", f"{run.method}, seed {run.spec.get('seed')}{scored}",
                                         str(adapter), run.spec.get("student")))
    return [c for c in choices if student_ref is None or c.student in (None, student_ref)]


# ---------------------------------------------------------------------------------------
# Rendering (plain HTML strings; the page shows them, the tests read them)


def word_diff(first: str, second: str) -> list[DiffPiece]:
    """Word-level difference of two texts (difflib on whitespace-separated words)."""
    a, b = first.split(), second.split()
    pieces = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            pieces.append(DiffPiece("same", " ".join(a[i1:i2])))
            continue
        if i2 > i1:
            pieces.append(DiffPiece("removed", " ".join(a[i1:i2])))
        if j2 > j1:
            pieces.append(DiffPiece("added", " ".join(b[j1:j2])))
    return pieces


DIFF_STYLE = {"same": "", "removed": "background:#fdd;text-decoration:line-through;color:#900",
              "added": "background:#dfd;color:#060"}


def diff_html(pieces: list[DiffPiece]) -> str:
    """The diff as escaped HTML spans: removed words struck through in red, added ones in green."""
    spans = [f'<span class="pk-diff-{p.kind}" style="{DIFF_STYLE[p.kind]}">{html.escape(p.text)}</span>'
             if DIFF_STYLE[p.kind] else html.escape(p.text) for p in pieces]
    return '<div style="line-height:1.9;font-family:monospace">' + " ".join(spans) + "</div>"


def loss_color(loss: float, vmax: float) -> str:
    """White (0 nats) to red (>= vmax nats)."""
    level = 0.0 if vmax <= 0 else max(0.0, min(1.0, loss / vmax))
    fade = round(255 * (1 - 0.8 * level))
    return f"rgb(255,{fade},{fade})"


def _visible(token: str) -> str:
    """Token text with its whitespace made visible (a newline as ⏎, spaces as ·)."""
    return token.replace("\n", "⏎").replace(" ", "·")


def token_loss_html(losses: list[TokenLoss], vmax: float) -> str:
    """The tokens as escaped HTML spans coloured by loss (hover: the loss in nats)."""
    spans = [f'<span class="pk-token" title="{loss:.3f} nats" style="background:{loss_color(loss, vmax)};'
             f'padding:1px 2px;margin:1px;border-radius:3px;display:inline-block">{html.escape(_visible(token))}</span>'
             for token, loss in losses]
    return '<div style="line-height:1.9;font-family:monospace">' + "".join(spans) + "</div>"
