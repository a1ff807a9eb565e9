"""What a study's PKT cells train from: their exports, keyed by content so cells that differ only in
learning rate share one, the random-weight teachers of the control arm (one per seed), and each export's
signals.
Several worker processes may need the same export: the first makes it under a lock, the others wait.
"""
from __future__ import annotations

import contextlib
import io
import json
import time
from dataclasses import asdict
from pathlib import Path

from ..core.fsio import atomic_directory, atomic_write_json, output_lock, sha256_bytes
from ..transfer.lora import MANIFEST_FILE
from .cost import write_extraction_cost
from .recipe import Recipe

EXPORTS_DIR = "exports"
TEACHERS_DIR = "teachers"
MAKE_WAIT_S = 3600.0  # how long a worker waits for another worker making the export it needs


def export_key(recipe: Recipe, arm, seed: int) -> str:
    """Content key of a PKT cell's export (independent of DIR, so a moved study still resumes)."""
    teacher = recipe.teacher_of(arm)
    payload = {"teacher": f"random:{teacher}:seed{seed}" if recipe.random_teacher(arm) else teacher,
               "student": recipe.student, "seed_data": recipe.seed_data,
               "transfer": asdict(recipe.transfer_config(arm, seed)),
               "sensitivity": asdict(recipe.sensitivity_config(arm))}
    return sha256_bytes(json.dumps(payload, sort_keys=True, default=list).encode())[:16]


def random_teacher(teacher_ref: str, out: Path, seed: int) -> Path:
    """The teacher's architecture with random weights drawn with torch seed `seed` (the cell's: a new
    draw per seed, so the control's spread over draws is in its interval), saved once per seed under
    DIR/teachers/ with the teacher's tokenizer: is it the knowledge, or any teacher-shaped init?"""
    path = Path(out) / TEACHERS_DIR / f"random-{sha256_bytes(teacher_ref.encode())[:12]}-seed{seed}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(path, wait_s=MAKE_WAIT_S):  # another worker making it: wait, then reuse it
        if not (path / "config.json").is_file():
            _save_random_teacher(teacher_ref, path, seed)
    return path


def _save_random_teacher(teacher_ref: str, path: Path, seed: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..core.models import load_config, resolve_ref

    config = load_config(teacher_ref)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    tokenizer = AutoTokenizer.from_pretrained(resolve_ref(teacher_ref))
    with atomic_directory(path) as tmp, contextlib.redirect_stderr(io.StringIO()):  # no progress bar
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def cell_export(recipe: Recipe, arm, seed: int, out: Path, device) -> Path:
    """The cell's export directory, made unless a cell with the same content already made it."""
    from ..transfer.pipeline import extract_to_dir

    path = Path(out) / EXPORTS_DIR / export_key(recipe, arm, seed)
    if (path / MANIFEST_FILE).is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(path, wait_s=MAKE_WAIT_S):  # cells sharing the export in other workers wait for it
        if not (path / MANIFEST_FILE).is_file():
            teacher = recipe.teacher_of(arm)
            if recipe.random_teacher(arm):
                teacher = str(random_teacher(teacher, out, seed))
            started = time.perf_counter()
            extract_to_dir(teacher, recipe.student, recipe.seed_data, path, recipe.transfer_config(arm, seed),
                           recipe.sensitivity_config(arm), device=device)
            write_extraction_cost(recipe, arm, teacher, path, time.perf_counter() - started)
        if not signals_file(path).is_file():
            _write_signals(recipe, path)
    return path


def signals_file(export: Path) -> Path:
    return export.parent / f"{export.name}.signals.json"


def _write_signals(recipe: Recipe, export: Path) -> None:
    from ..core.data import load_records
    from ..core.models import load_model
    from .signals import export_signals

    student, tokenizer = load_model(recipe.student)
    atomic_write_json(signals_file(export),
                      export_signals(export, student, tokenizer, load_records(recipe.val_data)))
