"""The training loss, in one place: token cross-entropy on the completion (labelled) tokens.

`completion_loss` is the loss transformers computes for a causal LM (labels shifted by one, -100
ignored, summed and divided by the labelled tokens of the whole optimiser batch, `num_items`), computed
without materialising the logits of the prompt and padding positions: the decoder's hidden states are
gathered at the labelled positions first and only those rows go through the LM head
(`paraknow.runs.labelled.head_logits`). A distillation term belongs here, beside the cross-entropy:
the student's logits on exactly the completion tokens are `head_logits`' rows.

`CompletionTrainer` is the transformers Trainer with this loss. Under several processes (the model
wrapped in DistributedDataParallel, whose gradient hooks run only through its own forward) it falls
back to the model's own loss. It also takes out what the Trainer spends per micro-step beyond the
maths (issue 24, docs/study.md "Throughput"):

- length-bucketed micro-batches: the Trainer's seeded shuffle, then each optimiser batch's rows sorted
  by length (`BatchSortedSampler`), so a micro-batch holds rows of similar length (less padding) and
  every optimiser step still sees the same rows as with the plain shuffle (the same sums, in another
  order);
- no attention mask for a right-padded batch (collate's): causal attention alone keeps every real
  position from the padding after it, so the same outputs without a padding mask built per layer;
- the FLOP count the Trainer logs is 6 x tokens x parameters with the parameters counted once, not
  re-counted over every module at every micro-step.
"""
from __future__ import annotations

import functools

import torch
from accelerate.data_loader import SeedableRandomSampler
from torch.utils.data import RandomSampler, Sampler
from transformers import Trainer

from .labelled import head_logits


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

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is not RandomSampler:  # another strategy asked for in the arguments: theirs
            return sampler
        args = self.args
        seed = args.data_seed if args.data_seed is not None else args.seed
        # the shuffle accelerate would make of a RandomSampler (the same permutation per epoch)
        shuffle = SeedableRandomSampler(data_source=sampler.data_source, data_seed=seed)
        group = args.train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
        return BatchSortedSampler(shuffle, [len(item.input_ids) for item in sampler.data_source], group)

    def floating_point_ops(self, inputs: dict) -> int:
        return 6 * inputs["input_ids"].numel() * self._parameters_per_token

    @functools.cached_property
    def _parameters_per_token(self) -> int:
        """The parameters the Trainer's FLOP estimate counts (embeddings excluded), counted once."""
        count = getattr(self.model, "num_parameters", None)
        return count(exclude_embeddings=True) if count else 0


class BatchSortedSampler(Sampler):
    """`base`'s order with each run of `group` indices (one optimiser batch) sorted by `lengths`: the
    micro-batches cut from it in turn are length buckets of the same optimiser batch."""

    def __init__(self, base: SeedableRandomSampler, lengths: list[int], group: int):
        self.base, self.lengths, self.group = base, lengths, group

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:  # accelerate's data loader calls it each epoch
        self.base.set_epoch(epoch)

    def __iter__(self):
        order = list(self.base)
        for start in range(0, len(order), self.group):
            yield from sorted(order[start:start + self.group], key=self.lengths.__getitem__)
