"""Memory estimates made before anything loads: a model's weights at a dtype, what a sensitivity pass
needs (weights, running sums, activations, the gathered map), free memory on a device, and the
`--max-memory` limits. Each takes a transformers config or a `ModelInfo` (the Models page has the latter).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .architecture import ModelInfo, describe_config, resolve_dtype
from .errors import ParaknowError


def model_info(config_or_info) -> ModelInfo:
    return config_or_info if isinstance(config_or_info, ModelInfo) else describe_config(config_or_info)


def element_size(dtype) -> int:
    """Bytes per entry of a dtype (None: float32)."""
    return torch.empty((), dtype=resolve_dtype(dtype)).element_size()


def estimate_memory_bytes(config, dtype=None) -> int:
    """Bytes of weights for a config at a dtype (activations and gradients not included)."""
    return model_info(config).n_params * element_size(dtype)


@dataclass
class SensitivityMemory:
    """Bytes a sensitivity pass needs, by what and where (see `estimate_sensitivity_memory`)."""
    weights: int
    sums: int  # the running sums, one per parameter entry (0 for forward-only metrics)
    activations: int  # allowance: one sample's forward + backward at max_length, the largest gradient
    result: int  # the float32 map gathered on the host at the end (0 when the sums already are it)
    sums_on_host: bool

    def device_bytes(self) -> int:
        """Where the model runs (the host itself for a CPU run)."""
        return self.weights + self.activations + (0 if self.sums_on_host else self.sums)

    def host_bytes(self) -> int:
        """In host memory besides a CPU run's own `device_bytes`."""
        return self.result + (self.sums if self.sums_on_host else 0)

    def total_bytes(self) -> int:
        """Everything, wherever it lives (a CPU run's whole need)."""
        return self.device_bytes() + self.host_bytes()


def estimate_sensitivity_memory(config, dtype=None, sums_dtype="float32", sums_on_host=False,
                                max_length: int = 2048, per_parameter_sums: bool = True) -> SensitivityMemory:
    """Memory of a gradient sensitivity pass before loading anything.

    Activations per token and layer are taken as 17 d + 3 ffn values at the weights' dtype (the
    usual transformer count without recomputation) plus float32 logits and their gradient over the
    vocabulary; the largest single gradient (often the embedding) is in flight at the end.
    """
    info = model_info(config)
    size, n = element_size(dtype), info.n_params
    per_token = info.n_layers * (17 * info.hidden_size + 3 * info.intermediate_size) * size + 2 * info.vocab_size * 4
    largest = max(o * i for o, i in info.shapes.values()) * max(size, 4)
    sums = n * element_size(sums_dtype) if per_parameter_sums else 0
    result_is_sums = sums_on_host and per_parameter_sums and resolve_dtype(sums_dtype) == torch.float32
    return SensitivityMemory(weights=n * size, sums=sums, activations=max_length * per_token + largest,
                             result=0 if result_is_sums else n * 4, sums_on_host=sums_on_host)


_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?$", re.IGNORECASE)
_UNITS = {"B": 1, **{f"{p}B": 1000 ** (k + 1) for k, p in enumerate("KMGT")},
          **{f"{p}IB": 1024 ** (k + 1) for k, p in enumerate("KMGT")}}


def parse_max_memory(spec: str | None) -> dict | None:
    """`0=20GiB,1=20GiB,cpu=60GiB` -> {0: bytes, 1: bytes, 'cpu': bytes}, from_pretrained's max_memory."""
    if not spec:
        return None
    limits = {}
    for part in spec.split(","):
        key, _, size = part.strip().partition("=")
        match = _SIZE_RE.match(size.strip())
        key = key.strip().lower()
        if not match or not (key.isdigit() or key in ("cpu", "mps")):
            raise ParaknowError(f"--max-memory takes DEVICE=SIZE pairs like 0=20GiB,cpu=60GiB (GPU index or cpu; "
                                f"units B, KB, MB, GB, KiB, MiB, GiB); got '{part.strip()}'.")
        limits[int(key) if key.isdigit() else key] = int(float(match[1]) * _UNITS[(match[2] or "B").upper()])
    return limits


def available_memory_bytes(device: str) -> int | None:
    """Free memory where the weights will go: all GPUs for 'auto', one GPU, or the host's RAM."""
    if device == "auto":
        return sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        with open("/proc/meminfo") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        return None

