"""What an export takes from each extracted teacher block: the block itself, or a control that keeps
part of it (TransferConfig.teacher_weights; the study's `extract.teacher_weights`, docs/study.md).

  trained   the block as the teacher has it (PKT)
  spectrum  random orthonormal U, V with the block's own singular values: the spectrum without the
            teacher's directions
  shuffled  the block with its rows and columns permuted: the same entries and singular values, the
            directions scrambled against the student's coordinates

Each is a function (block [o, i], generator) -> [o, i], seeded by the export's `seed` through the
generator (one per export, drawn in plan order: the same seed gives the same export).
"""
from __future__ import annotations

import torch


def _trained(block: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return block


def random_orthonormal(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """[n, k] with orthonormal columns, uniform (Haar) over such matrices: QR of a Gaussian with the
    signs of R's diagonal moved into Q."""
    Q, R = torch.linalg.qr(torch.randn(n, k, generator=generator, dtype=torch.float64))
    return Q * torch.sign(torch.diagonal(R))


def _spectrum(block: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    sigma = torch.linalg.svdvals(block.double())  # [k], k = min(o, i)
    out_dim, in_dim = block.shape
    U = random_orthonormal(out_dim, len(sigma), generator).to(block.device)  # [o, k]
    V = random_orthonormal(in_dim, len(sigma), generator).to(block.device)  # [i, k]
    return ((U * sigma) @ V.T).float()  # [o, i], float32 whatever the teacher's dtype


def _shuffled(block: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    rows = torch.randperm(block.shape[0], generator=generator).to(block.device)
    cols = torch.randperm(block.shape[1], generator=generator).to(block.device)
    return block[rows][:, cols]


BLOCK_WEIGHTS = {"trained": _trained, "spectrum": _spectrum, "shuffled": _shuffled}
BLOCK_WEIGHTS_HELP = ("what each extracted block gives: trained (the teacher's block), spectrum (random "
                      "orthonormal directions with the block's singular values), shuffled (the block with its "
                      "rows and columns permuted, seeded)")
