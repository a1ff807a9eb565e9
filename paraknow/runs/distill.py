"""Distillation from a teacher's outputs, the two paradigms beside parametric transfer (docs/distill.md).

- Logit KD (online): `distill_loss` is the loss, a pure function; `LogitDistillation` runs the teacher
  on each training batch and is the trainer's loss hook (`trainer_class`):
      loss = (1 - λ)·CE + λ·τ²·KL(p_T^τ ‖ p_S^τ)
  where p^τ = softmax(logits / τ), and both CE and KL are summed over the completion tokens (the
  CE's own masking: label != -100 after the causal shift) and divided by the same count, the
  Trainer's `num_items_in_batch` (the completion tokens of the whole accumulated batch).
- Sequence KD (offline): the teacher's greedy completions become the training records
  (`paraknow.runs.distill_data`).

The teacher runs in eval mode without gradients, in the same process, on the student's device.
It must share the student's vocabulary (`check_same_vocabulary`); where the two models' logits
have different widths (a padded embedding), the KL is taken over the common first columns,
which hold every token of the shared tokenizer.

TRL (1.16) was considered: its GKDTrainer's loss is a generalised Jensen-Shannon divergence
without the CE term or the τ² factor, and it is an SFTTrainer over `datasets`, not paraknow's
run directory and STOP; so the documented loss lives here, in transformers' own Trainer.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from ..core.data import IGNORE_INDEX
from ..core.errors import ParaknowError
from .labelled import head_logits


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                 weight: float, temperature: float, num_items=None) -> torch.Tensor:
    """(1 - weight)·CE + weight·temperature²·KL(p_T^τ ‖ p_S^τ) over the completion tokens.
    student_logits [b, s, V_S], teacher_logits [b, s, V_T], labels [b, s] (-100 where no loss).
    num_items: the divisor of both sums (the Trainer's count over the accumulated batch); None:
    this batch's completion tokens."""
    keep = labels[:, 1:] != IGNORE_INDEX  # [b, s-1]: position t predicts labels[t+1]
    return rows_loss(student_logits[:, :-1][keep].float(), teacher_logits[:, :-1][keep], labels[:, 1:][keep],
                     weight, temperature, num_items)


def rows_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, weight: float,
              temperature: float, num_items=None) -> torch.Tensor:
    """The same loss on the completion positions only: student [n, V_S] float32 logits, teacher [n, V_T],
    targets [n]. The CE is paraknow.runs.train_loss's (summed, divided by `num_items`), so weight 0 is
    plain fine-tuning exactly."""
    count = (targets.numel() or 1) if num_items is None else num_items
    if torch.is_tensor(count):
        count = count.to(student.device)
    ce = torch.nn.functional.cross_entropy(student, targets, reduction="sum") / count
    width = min(student.size(-1), teacher.size(-1))
    s = student[:, :width] / temperature  # [n, V]
    t = teacher[:, :width].float().to(student.device) / temperature  # [n, V]
    kl = torch.nn.functional.kl_div(torch.log_softmax(s, -1), torch.log_softmax(t, -1), reduction="sum",
                                    log_target=True)
    return (1 - weight) * ce + weight * temperature ** 2 * (kl / count)


@dataclass
class TeacherCost:
    """What the teacher cost a run: tokens through it, estimated FLOPs, seconds in it."""
    teacher_tokens: int = 0
    teacher_flops: float = 0.0  # 2·params·tokens for forward passes (6·params·tokens with a backward)
    teacher_seconds: float = 0.0

    def add_forward(self, params: int, tokens: int, seconds: float) -> None:
        self.teacher_tokens += int(tokens)
        self.teacher_flops += 2.0 * params * tokens
        self.teacher_seconds += seconds

    def to_dict(self) -> dict:
        return {**asdict(self), "teacher_seconds": round(self.teacher_seconds, 3)}


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


class LogitDistillation:
    """The Trainer's `compute_loss_func` for logit KD: the teacher's logits of the batch the student
    just saw (`batch`, set by the trainer class below), then `distill_loss`."""

    def __init__(self, teacher, weight: float, temperature: float):
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight, self.temperature = weight, temperature
        self.params = n_params(teacher)
        self.cost = TeacherCost()
        self.batch: dict | None = None

    def _forward(self, batch: dict, logits_of) -> torch.Tensor:
        """logits_of() without gradients, its time and tokens counted in `cost` (2·params per token: the
        estimate counts the LM head at every position even where only the completion rows are computed)."""
        start = time.perf_counter()
        with torch.no_grad():
            logits = logits_of()
        if logits.device.type == "cuda":
            torch.cuda.synchronize(logits.device)
        self.cost.add_forward(self.params, int(batch["attention_mask"].sum()), time.perf_counter() - start)
        return logits

    def teacher_logits(self, batch: dict) -> torch.Tensor:
        """[b, s, V_T] logits of the teacher on the student's batch (no gradients)."""
        return self._forward(batch, lambda: self.teacher(input_ids=batch["input_ids"],
                                                         attention_mask=batch["attention_mask"]).logits)

    def teacher_rows(self, batch: dict) -> torch.Tensor:
        """[n, V_T] float32 logits of the teacher at the batch's n completion positions, the rows
        `head_logits` gives the student (the LM head skips the prompt and padding positions)."""
        return self._forward(batch, lambda: head_logits(self.teacher, batch)[0])

    def __call__(self, outputs, labels, num_items_in_batch=None):
        return distill_loss(outputs.logits, self.teacher_logits(self.batch), labels, self.weight,
                            self.temperature, num_items_in_batch)


def trainer_class(distillation: LogitDistillation | None):
    """The trainer of a run: paraknow.runs.train_loss.CompletionTrainer, or for logit KD one whose loss
    adds the KD term on the same completion rows (pass `compute_loss_func=distillation` too: several
    processes fall back to the model's full logits, and `distillation` is that loss)."""
    from .train_loss import CompletionTrainer

    if distillation is None:
        return CompletionTrainer

    class DistillingTrainer(CompletionTrainer):
        def loss(self, model, inputs: dict, num_items=None) -> torch.Tensor:
            student, targets = head_logits(model, inputs)  # [n, V_S], [n]
            teacher = distillation.teacher_rows(inputs)  # [n, V_T]: the same rows
            return rows_loss(student, teacher, targets, distillation.weight, distillation.temperature, num_items)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            distillation.batch = inputs  # the teacher sees exactly what the student sees (also the fallback)
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return DistillingTrainer


def check_same_vocabulary(teacher: str, student: str) -> None:
    """Logit KD compares distributions token by token: the two tokenizers must map every token to the
    same id (token -> id content, `architecture.vocab_fingerprint`). Raises ParaknowError; reads no weights."""
    from ..core.models import describe_ref

    t, s = describe_ref(teacher), describe_ref(student)
    if t.vocab_hash != s.vocab_hash:
        raise ParaknowError(f"the distillation teacher '{teacher}' has another vocabulary than the student "
                            f"'{student}' (token -> id content differs: {t.vocab_size} vs {s.vocab_size} tokens, "
                            f"sha256 {str(t.vocab_hash)[:12]} vs {str(s.vocab_hash)[:12]}): logit KD needs one "
                            "vocabulary; use --distill sequences (the teacher's completions as training data) or a "
                            "teacher that shares the student's tokenizer.")


def logit_distillation(config, model) -> LogitDistillation | None:
    """The loss hook of a `--distill logits` run (its teacher loaded on the student's device), else None."""
    from ..core.models import load_model

    if config.distill != "logits":
        return None
    device = model.get_input_embeddings().weight.device
    teacher, _ = load_model(config.distill_teacher, dtype=config.dtype,
                            device=str(device) if device.type == "cuda" else None)
    return LogitDistillation(teacher, config.distill_weight, config.temperature)
