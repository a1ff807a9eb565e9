"""The training loss, in one place: token cross-entropy on the completion (labelled) tokens.

`completion_loss` is the loss transformers computes for a causal LM (labels shifted by one, -100
ignored, summed and divided by the labelled tokens of the whole optimiser batch, `num_items`), computed
without materialising the logits of the prompt and padding positions: the decoder's hidden states are
gathered at the labelled positions first and only those rows go through the LM head (about a quarter
of the positions in the built-in tasks). A distillation term belongs here, beside the cross-entropy:
the student's logits on exactly the completion tokens are `head_logits`' rows.

`CompletionTrainer` is the transformers Trainer with this loss. Under several processes (the model
wrapped in DistributedDataParallel, whose gradient hooks run only through its own forward) it falls
back to the model's own loss.
"""
from __future__ import annotations

import torch
from transformers import Trainer

from ..core.data import IGNORE_INDEX


def _causal_lm(model):
    """The transformers causal LM inside a (PEFT) model: its decoder and its LM head are called directly."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_logits(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [n, V] in float32 at the n labelled positions, their targets [n]): position t of a row
    predicts labels[t + 1], as transformers shifts them."""
    lm = _causal_lm(model)
    hidden = lm.get_decoder()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                              use_cache=False).last_hidden_state  # [b, s, d]
    targets = inputs["labels"][:, 1:]  # [b, s-1]
    keep = targets != IGNORE_INDEX  # [b, s-1]
    logits = lm.get_output_embeddings()(hidden[:, :-1][keep]).float()  # [n, d] -> [n, V]
    cap = getattr(lm.config, "final_logit_softcapping", None)  # gemma2/gemma3 cap their logits
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits, targets[keep]


def completion_loss(model, inputs: dict, num_items=None) -> torch.Tensor:
    """Summed cross-entropy of the labelled tokens divided by `num_items` (the labelled tokens of the
    optimiser batch; None: of this batch)."""
    logits, targets = head_logits(model, inputs)
    loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    return loss / (num_items if num_items is not None else targets.numel() or 1)


class CompletionTrainer(Trainer):
    """The Trainer computing `completion_loss` (the same loss as the model's own, see the module doc)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or isinstance(model, torch.nn.parallel.DistributedDataParallel):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = self.loss(model, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss scales a token-averaged loss
        return loss

    def loss(self, model, inputs: dict, num_items=None) -> torch.Tensor:
        """The training loss of one micro-batch (a distillation trainer adds its term here)."""
        return completion_loss(model, inputs, num_items)
