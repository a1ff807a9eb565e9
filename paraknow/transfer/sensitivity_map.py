"""A teacher's sensitivity map as the app and reports use it: the scores with the seed records and
settings they came from, and the summaries the pages draw (per layer x module, per layer, per group).

`sensitivity_map(...)` computes (or reads from the cache) and summarises in one call; the pages read
the fields of the `SensitivityMap` it returns.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from ..core.architecture import ATTN_ROLES, FFN_ROLES, layer_of, role_of
from ..core.errors import ParaknowError
from ..core.numerics import sum64
from .mapping import layer_scores

if TYPE_CHECKING:
    from .sensitivity import SensitivityConfig

Scores = dict[str, torch.Tensor]


@dataclass
class SensitivityMap:
    """Sensitivity of a teacher on seed samples, with where it came from and its summaries."""
    scores: Scores  # parameter name -> float32 scores of its shape
    meta: dict  # the file's metadata (paraknow.transfer.sensitivity_files.sensitivity_meta)
    config: SensitivityConfig
    records: list[dict]  # the seed records it was computed on (config.samples of them)
    label: str  # what the seed data is called ("task:arith:seed", an upload's name)
    data_sha256: str
    table: list[dict]  # module_table(scores)
    layer_scores: list[float]  # total per teacher layer
    shares: dict[str, float]  # group_shares(scores)
    teacher: dict | None = None  # the app's model spec {"ref", "dtype", "device"} of the teacher
    seconds: float = 0.0
    cached: bool = False  # read from cache/sensitivity/ instead of computed
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # the app uses the content key
    data_ref: str | None = None  # a reference that loads the seed data again (task:..., a JSONL path)

    def seed_warning(self) -> str | None:
        """The degenerate-seeds warning of this map's seed losses (paraknow.transfer.seeds), if any."""
        from .seeds import check_seeds

        losses = self.meta.get("seed_losses")
        return check_seeds(losses).message() if losses else None

    def provenance(self, teacher_ref: str, student_ref: str) -> dict:
        """What an export made from this map records about its origin (export.provenance)."""
        from .sensitivity_files import provenance

        return provenance(teacher_ref, student_ref, self.label, self.config, self.records)


def sensitivity_map(model, tokenizer, records: list[dict], config: SensitivityConfig, label: str, n_layers: int,
                    progress: Callable | None = None, model_ref: str | None = None,
                    teacher: dict | None = None) -> SensitivityMap:
    """The teacher's sensitivity on the first `config.samples` records, through the cache, summarised."""
    from ..core.records import records_sha256
    from .sensitivity_files import cached_sensitivity_hit

    config.validate()
    if len(records) < config.samples:
        raise ParaknowError(f"asked for {config.samples} seed samples but the data has only {len(records)}; "
                            "lower the sample count or give more data.")
    used = records[:config.samples]
    t0 = time.time()
    scores, meta, hit = cached_sensitivity_hit(model, tokenizer, used, config, progress, model_ref=model_ref)
    return SensitivityMap(scores=scores, meta=meta, config=config, records=used, label=label,
                          data_sha256=records_sha256(used), table=module_table(scores),
                          layer_scores=layer_scores(scores, n_layers), shares=group_shares(scores),
                          teacher=teacher, seconds=time.time() - t0, cached=hit)


MODULE_ORDER = ATTN_ROLES + FFN_ROLES


def module_table(scores: Scores) -> list[dict]:
    """One row per (layer, module role): `layer`, `module`, `sum`, `mean`, `numel`."""
    rows = []
    for name, s in scores.items():
        layer, role = layer_of(name), role_of(name)
        if layer is None or role is None:
            continue
        rows.append({"layer": layer, "module": role, "sum": float(s.double().sum()),
                     "mean": float(s.double().mean()), "numel": s.numel(), "param": name})
    rows.sort(key=lambda r: (r["layer"], MODULE_ORDER.index(r["module"])))
    return rows


GROUP_LABELS = {"attention": "attention", "ffn": "FFN", "embeddings": "embeddings", "other": "norms"}  # for display


def group_shares(scores: Scores) -> dict[str, float]:
    """Share of total sensitivity in attention, FFN, embeddings and everything else (norms)."""
    totals = {"attention": 0.0, "ffn": 0.0, "embeddings": 0.0, "other": 0.0}
    for name, s in scores.items():
        role = role_of(name)
        group = ("attention" if role in ATTN_ROLES else "ffn" if role in FFN_ROLES
                 else "embeddings" if role in ("embed_tokens", "lm_head") else "other")
        totals[group] += float(s.double().sum())
    grand = sum(totals.values()) or 1.0
    return {k: v / grand for k, v in totals.items()}


def marginals(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row sums [out] and column sums [in] of a 2-D score matrix, in float64."""
    return sum64(matrix, 1), sum64(matrix, 0)


def pooled(matrix: torch.Tensor, max_rows: int = 256, max_cols: int = 256, reduce: str = "mean") -> torch.Tensor:
    """Block-pool a 2-D matrix down to at most [max_rows, max_cols] for display.

    Uses adaptive pooling so any shape works; `reduce` is `mean` or `max`.
    """
    if matrix.dim() == 1:
        matrix = matrix[None, :]
    out_rows, out_cols = min(max_rows, matrix.shape[0]), min(max_cols, matrix.shape[1])
    x = matrix.float()[None, None]  # [1, 1, out, in]
    pool = torch.nn.functional.adaptive_avg_pool2d if reduce == "mean" else torch.nn.functional.adaptive_max_pool2d
    return pool(x, (out_rows, out_cols))[0, 0]
