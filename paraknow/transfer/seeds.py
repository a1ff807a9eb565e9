"""Are the seed samples worth a map? The teacher's loss on each seed, and a warning when they are degenerate.

A seed the teacher already predicts perfectly (loss ~ 0) has a gradient ~ 0, so it adds (almost) nothing to
a gradient-based map: when most seeds are like that, or a few seeds hold most of the loss, the map rests on
those few. `check_seeds(losses)` says so with the numbers; the CLI (`sensitivity`, `extract`) and the
Sensitivity page show its message. The losses are stored in the map's metadata (`seed_losses`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.data import collate, encode_all, per_sample_loss
from ..core.numerics import float32_matmuls

NEAR_ZERO = 0.01  # a seed loss below this (nats per completion token) teaches the map almost nothing
MOST = 0.5  # degenerate when more than this share of the seeds is near zero...
FEW = 0.1  # ...or when the top FEW share of the seeds (at least one)...
FEW_HOLD = 0.8  # ...holds more than this share of the summed seed loss


def seed_losses(model, tokenizer, records: list[dict], max_length: int = 2048, batch_size: int = 8) -> list[float]:
    """The model's mean completion-token loss on each record (forward only, the sensitivity's masking; a
    bfloat16 CPU model computes its products in float32 as the sensitivity pass does, not through the
    scalar fallback)."""
    items = encode_all(tokenizer, records, max_length)
    device = model.get_input_embeddings().weight.device
    losses = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), float32_matmuls(model):
            for start in range(0, len(items), batch_size):
                batch = {k: v.to(device) for k, v in collate(items[start:start + batch_size], pad_id=0).items()}
                labels = batch.pop("labels")
                losses += per_sample_loss(model(**batch).logits.float(), labels).tolist()  # logits [b, s, V]
    finally:
        model.train(was_training)
    return losses


@dataclass
class SeedCheck:
    n: int
    near_zero: int  # seeds whose loss is below NEAR_ZERO
    top: list  # the losses of the top FEW share of the seeds (at least one), largest first
    top_share: float  # their share of the summed loss

    @property
    def degenerate(self) -> bool:
        return self.n > 1 and (self.near_zero > MOST * self.n or self.top_share > FEW_HOLD)

    def message(self) -> str | None:
        """The warning, with the numbers and what to do; None when the seeds are fine."""
        if not self.degenerate:
            return None
        return (f"degenerate seeds: {self.near_zero} of {self.n} seed losses are below {NEAR_ZERO:g}, and "
                f"{len(self.top)} sample(s) (losses {', '.join(f'{x:.3f}' for x in self.top)}) hold "
                f"{self.top_share:.0%} of the summed loss, so the map rests on them. The teacher already solves "
                "these seeds: use harder seed samples or more of them.")

    def to_dict(self) -> dict:
        return {"n": self.n, "near_zero": self.near_zero, "top": self.top, "top_share": self.top_share,
                "degenerate": self.degenerate}


def check_seeds(losses: list[float]) -> SeedCheck:
    ordered = sorted(losses, reverse=True)
    k = max(1, math.floor(FEW * len(ordered)))
    total = sum(ordered)
    return SeedCheck(len(ordered), sum(x < NEAR_ZERO for x in ordered), [round(x, 6) for x in ordered[:k]],
                     sum(ordered[:k]) / total if total > 0 else 1.0)
