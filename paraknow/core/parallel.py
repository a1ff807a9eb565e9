"""Several processes under `torchrun` / `accelerate launch`: who this process is, and summing results.

The launchers set WORLD_SIZE, RANK and LOCAL_RANK; `process_group` joins their group for the
duration of a command (gloo on CPUs, NCCL on GPUs) and leaves it cleanly, so no process exits with
the group still up. Outside a launch everything here is a no-op: rank 0 of 1.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


def launched_world_size() -> int:
    """Processes started by the launcher (1 when run plainly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank as the launcher numbered it (0 when run plainly), known before the group is joined."""
    return int(os.environ.get("RANK", "0"))


def rank_and_size() -> tuple[int, int]:
    """(this process's rank, number of processes) of the joined group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def process_device(device: str | None) -> str | None:
    """Under a multi-process launch on GPUs each process takes its own GPU, cuda:LOCAL_RANK."""
    if launched_world_size() > 1 and device in (None, "auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


@contextlib.contextmanager
def process_group(device: str | None):
    """Join the launcher's process group for the block (nothing to do when run plainly)."""
    if launched_world_size() <= 1 or not dist.is_available() or dist.is_initialized():
        yield
        return
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
        dist.barrier()  # every process done (rank 0 has written its file) before the group goes
    finally:
        dist.destroy_process_group()


def all_reduce_sum(tensors: dict[str, torch.Tensor]) -> None:
    """Sum every tensor over the processes, in place, in sorted key order (the same on every rank).

    A tensor that is not float32 or not where the backend works (the host for gloo, this process's
    GPU for NCCL) is summed through a float32 copy there.
    """
    _, world_size = rank_and_size()
    if world_size == 1:
        return
    where = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    for name in sorted(tensors):
        tensor = tensors[name]
        if tensor.device == where and tensor.dtype == torch.float32:
            dist.all_reduce(tensor)
        else:
            buffer = tensor.to(device=where, dtype=torch.float32)
            dist.all_reduce(buffer)
            tensor.copy_(buffer)
