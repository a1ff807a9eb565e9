"""What each cell cost (results.json's `cost`): the teacher's tokens, estimated FLOPs and seconds, and
the student's training seconds -- the price of each paradigm beside its accuracy.

- PKT: the extraction's sensitivity pass over the seed samples (2·params·tokens per forward, 6 with the
  backward; the metric's `flops_per_param_token`), seconds = the extraction's wall time, shared by
  every cell that trains from that export (and counted in each: it is what the method costs);
- logit KD: one teacher forward per training batch (paraknow.runs.distill, in the run's status);
- sequence KD: the teacher's generation of the training targets (paraknow.runs.distill_data);
- vanilla, PiSSA and the teacher-free initialisations: no teacher, zeros.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..core.fsio import atomic_write_json
from .recipe import Recipe

TEACHER_KEYS = ("teacher_tokens", "teacher_flops", "teacher_seconds")
COST_KEYS = (*TEACHER_KEYS, "train_seconds")


def cost_file(export: Path) -> Path:
    return export.parent / f"{export.name}.cost.json"


def write_extraction_cost(recipe: Recipe, arm, teacher: str, export: Path, seconds: float | None) -> None:
    """exports/<key>.cost.json: the teacher's side of making `export` (seconds None: not measured here)."""
    from transformers import AutoTokenizer

    from ..core.architecture import describe_config
    from ..core.data import encode_all, load_records
    from ..core.models import load_config, resolve_ref
    from ..transfer.sensitivity import METRICS

    sens = recipe.sensitivity_config(arm)
    tokenizer = AutoTokenizer.from_pretrained(resolve_ref(teacher))
    tokens = sum(len(x.input_ids) for x in encode_all(tokenizer, load_records(recipe.seed_data)[:sens.samples],
                                                      sens.max_length))
    params = describe_config(load_config(teacher)).n_params
    atomic_write_json(cost_file(export), {"teacher_tokens": tokens, "teacher_seconds": seconds and round(seconds, 3),
                                          "teacher_flops": float(METRICS[sens.metric].flops_per_param_token
                                                                 * params * tokens)})


def cell_cost(status: dict, export: Path | None) -> dict:
    """The cost of one trained cell from its run's status (and its export's cost file, for PKT)."""
    cost = {key: status.get(key) or 0 for key in TEACHER_KEYS}
    extraction = json.loads(cost_file(export).read_text()) if export and cost_file(export).is_file() else {}
    for key in TEACHER_KEYS:
        cost[key] += extraction.get(key) or 0
    cost["teacher_seconds"] = round(cost["teacher_seconds"], 3)
    cost["train_seconds"] = status.get("train_runtime")
    return cost
