"""Logits only where there is a label: the LM head applied to the decoder's hidden states at the labelled
positions, never to the prompt and padding positions (issue 24). The training loss
(`paraknow.runs.train_loss`), logit distillation (`paraknow.runs.distill`) and the evaluation loss
(`paraknow.runs.evaluate`) all take their logits from `head_logits`, so none of them materialises the
full [batch, seq, vocab] tensor (the completion is about a quarter of the positions in the built-in tasks).
"""
from __future__ import annotations

import torch

from ..core.data import IGNORE_INDEX, per_sample_loss


def causal_lm(model):
    """The transformers causal LM inside a (PEFT) model: its decoder and its LM head are called directly."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_logits(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [n, V] in float32 at the n labelled positions, their targets [n]): position t of a row
    predicts labels[t + 1], as transformers shifts them. The rows come in row-major order (row 0's
    positions first), as `labelled_rows` numbers them."""
    lm = causal_lm(model)
    mask = inputs["attention_mask"]  # [b, s]
    if bool((mask[:, 1:] <= mask[:, :-1]).all()):  # right-padded: causal attention alone never reaches
        mask = None                                 # the padding from a real position (no mask to build)
    hidden = lm.get_decoder()(input_ids=inputs["input_ids"], attention_mask=mask,
                              use_cache=False).last_hidden_state  # [b, s, d]
    targets = inputs["labels"][:, 1:]  # [b, s-1]
    keep = targets != IGNORE_INDEX  # [b, s-1]
    logits = lm.get_output_embeddings()(hidden[:, :-1][keep]).float()  # [n, d] -> [n, V]
    cap = getattr(lm.config, "final_logit_softcapping", None)  # gemma2/gemma3 cap their logits
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits, targets[keep]


def labelled_rows(labels: torch.Tensor) -> torch.Tensor:
    """[n]: the batch row of each of `head_logits`' n rows (labels [b, s])."""
    return (labels[:, 1:] != IGNORE_INDEX).nonzero()[:, 0]  # nonzero is row-major, as the mask gathers


def _has_head(lm) -> bool:
    """Whether `lm` splits into a decoder and an LM head (a transformers causal LM does)."""
    head = getattr(lm, "get_output_embeddings", None)
    return hasattr(lm, "get_decoder") and head is not None and head() is not None


def sample_losses(model, inputs: dict) -> torch.Tensor:
    """[b]: each row's mean cross-entropy over its labelled tokens (0 for a row with none), what
    `paraknow.core.data.per_sample_loss` gives from the full logits. Another model object (no decoder and
    head to call apart) gives its full logits [b, s, V] to `per_sample_loss`."""
    if not _has_head(causal_lm(model)):
        return per_sample_loss(model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits,
                               inputs["labels"])
    logits, targets = head_logits(model, inputs)  # [n, V], [n]
    token = torch.nn.functional.cross_entropy(logits, targets, reduction="none")  # [n]
    labels = inputs["labels"]  # [b, s]
    sums = token.new_zeros(labels.size(0)).index_add_(0, labelled_rows(labels), token)  # [b]
    return sums / (labels[:, 1:] != IGNORE_INDEX).sum(1).clamp(min=1)
