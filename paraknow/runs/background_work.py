"""The kinds of background job the pages start (paraknow/runs/background.py runs them).

Each kind is one function `(spec, job_dir, progress) -> result` registered in KINDS: it runs in
the job's own process, loads what it needs from the spec (model references, the seed records in
JOB_DIR/records.jsonl, settings) and returns a JSON-able result that status.json keeps. Results
that have a content cache of their own go there (a sensitivity map to
cache/sensitivity/<key>.safetensors, an export to its folder); the result then says where.
"""
from __future__ import annotations

from pathlib import Path

RECORDS_FILE = "records.jsonl"


def _records(job_dir: Path) -> list[dict]:
    from ..core.records import parse_jsonl

    return parse_jsonl((job_dir / RECORDS_FILE).read_text(encoding="utf-8"), source=RECORDS_FILE)


def _load(spec: dict):
    """(model, tokenizer) of a {"ref", "dtype", "device"} model spec."""
    from ..core.models import load_model, quiet_transformers

    quiet_transformers()
    return load_model(spec["ref"], dtype=spec.get("dtype"), device=spec.get("device"))


def run_sensitivity(spec: dict, job_dir: Path, progress) -> dict:
    """The teacher's sensitivity map on the records, into the content cache."""
    from ..transfer.sensitivity import SensitivityConfig
    from ..transfer.sensitivity_files import cache_path, cached_sensitivity, sensitivity_key

    model, tokenizer = _load(spec["model"])
    records = _records(job_dir)
    config = SensitivityConfig(**spec["config"])
    progress(0, config.samples, "starting")
    _, meta = cached_sensitivity(model, tokenizer, records, config, progress, model_ref=spec["model"]["ref"])
    return {"path": str(cache_path(sensitivity_key(model, records, config))), "meta": meta}


def run_similarity(spec: dict, job_dir: Path, progress) -> dict:
    """Linear CKA of every teacher x student layer on the records (the result is the matrix)."""
    from ..transfer.similarity import layer_similarity

    teacher, t_tok = _load(spec["teacher"])
    student, s_tok = _load(spec["student"])
    matrix, info = layer_similarity(teacher, student, t_tok, _records(job_dir), student_tokenizer=s_tok,
                                    progress=progress)
    return {"matrix": matrix.tolist(), "info": info}  # [L_T, L_S]


def _pair_and_map(spec: dict):
    """The TransferConfig, both models described and the cached map (with its layer similarity) of a spec."""
    import numpy as np

    from ..core.architecture import describe
    from ..transfer.plan import TransferConfig
    from ..transfer.sensitivity_files import load_sensitivity

    teacher, t_tok = _load(spec["teacher"])
    student, s_tok = _load(spec["student"])
    scores, _ = load_sensitivity(spec["sensitivity"])
    similarity = np.array(spec["similarity"]) if spec.get("similarity") is not None else None  # [L_T, L_S]
    return (TransferConfig.from_dict(spec["config"]), teacher, student, describe(teacher, t_tok),
            describe(student, s_tok), scores, similarity)


def run_export(spec: dict, job_dir: Path, progress) -> dict:
    """Plan and write an export from a cached sensitivity map (the same plan the page shows)."""
    from ..transfer.pipeline import plan_and_export

    config, teacher, student, t_info, s_info, scores, similarity = _pair_and_map(spec)
    manifest = plan_and_export(teacher, lambda: student, t_info, s_info, scores, config, spec["out"], spec["provenance"],
                               similarity, progress, overwrite=bool(spec.get("overwrite")))
    return {"dir": spec["out"], "modules": len(manifest["modules"])}


def run_compare(spec: dict, job_dir: Path, progress) -> dict:
    """Every structure x layer strategy x coherent level planned on a cached map (paraknow.transfer.compare)."""
    from ..transfer.compare import compare_granularity

    config, teacher, student, t_info, s_info, scores, similarity = _pair_and_map(spec)
    rows = compare_granularity(teacher, student, t_info, s_info, scores, config, similarity, progress=progress)
    return {"rows": [row.to_dict() for row in rows]}


def run_verify(spec: dict, job_dir: Path, progress) -> dict:
    """Plain-PEFT check of an export against the original student (paraknow/transfer/export.py)."""
    from ..transfer.export import verify_export

    student, s_tok = _load(spec["student"])
    return verify_export(student, s_tok, spec["export_dir"], _records(job_dir), max_length=spec["max_length"],
                         progress=progress).to_dict()


KINDS = {"sensitivity": run_sensitivity, "similarity": run_similarity, "export": run_export,
         "verify": run_verify, "compare": run_compare}
