"""How an extracted init relates to the student it lands in (per module).

- captured / area share and their ratio, the lift (on `transfer.ModulePlan`): a lift near 1
  means the selection holds no more of the teacher matrix's sensitivity than any part of the
  same size would.
- cosine similarity of the init delta s*B@A with the student's weight W, and with the base
  W - s*B@A that residual mode trains from. Neural Incompatibility (Tan et al., ACL 2025)
  reports ~0 for the paper's extraction; docs/structure.md discusses the numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .lora import factorise, scaling


@dataclass
class InitCosines:
    to_weight: float  # cos(s*B@A, W)
    to_residual: float  # cos(s*B@A, W - s*B@A)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    return float((a * b).sum() / (na * nb)) if na > 0 and nb > 0 else 0.0


def init_cosines(delta: torch.Tensor, weight: torch.Tensor) -> InitCosines:
    """Cosines of an init delta [out, in] with the student weight [out, in] and with weight - delta."""
    delta, weight = delta.double(), weight.double()
    return InitCosines(_cos(delta, weight), _cos(delta, weight - delta))


def oriented_weight(params: dict, name: str, transposed: bool) -> torch.Tensor:
    """A weight as the plan orients it (embed_tokens [V, d] -> [d, V]), float32 on the CPU."""
    w = params[name].detach().float().cpu()
    return w.T if transposed else w


def module_cosines(teacher_params: dict, student_params: dict, mod, config) -> InitCosines:
    """Factorise one planned module (a `transfer.ModulePlan`) as `config` (a TransferConfig) would, and
    compare its delta with the student's weight."""
    block = mod.selection.apply(oriented_weight(teacher_params, mod.teacher_param, mod.transposed))  # [o_S, i_S]
    f = factorise(block, config.rank, config.alpha, config.split, config.svd, config.seed)
    delta = scaling(config.rank, config.alpha) * f.B.double() @ f.A.double()  # [o_S, i_S]
    return init_cosines(delta, oriented_weight(student_params, mod.student_module + ".weight", mod.transposed))
