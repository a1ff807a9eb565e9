"""Non-visual helpers of the Export page (no streamlit here either: plain functions, testable).

- export names and the list of exports under cache/exports/
- zipping an export for download
(verifying an export with plain PEFT is paraknow.transfer.export.verify_export)
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from paraknow.core.errors import ParaknowError
from paraknow.core.fsio import zip_folder
from paraknow.transfer.lora import MANIFEST_FILE
from paraknow.transfer.recipe import NAME_MAX, check_export_name  # noqa: F401 - the pages call ops.check_export_name


def shorten(text: str, max_chars: int) -> str:
    """`text` itself when it fits, else its start plus 8 hex digits of its hash (two long names
    that share a start stay apart)."""
    if len(text) <= max_chars:
        return text
    return text[: max_chars - 9].rstrip("-._") + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]


def safe_file_name(name: str, default: str = "data.jsonl", max_chars: int = 100) -> str:
    """An uploaded file's name made safe to store: letters, digits, '.', '_', '-' only, no
    folders, at most `max_chars` characters with the suffix kept (file systems stop at 255)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name).name).strip("-.") or default
    suffix = Path(safe).suffix if len(Path(safe).suffix) <= 10 else ""
    return shorten(safe[: len(safe) - len(suffix)], max_chars - len(suffix)) + suffix


def slug(text: str) -> str:
    """'demo:teacher' -> 'demo-teacher'; '/x/y/model.gguf' -> 'model'."""
    text = Path(text).stem if ("/" in text or text.endswith(".gguf")) else text
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:40] or "model"


def default_export_name(teacher: str, student: str, data_label: str, structure: str, tag: str = "") -> str:
    """'<teacher>-to-<student>-<data>-<structure>[-<tag>]'; the page's tag is a short hash of the
    settings, so exports with other settings get other names."""
    data = data_label.split(":")[1] if data_label.startswith("task:") else slug(data_label)
    data = re.sub(r"\.jsonl?$", "", data)  # 'upload-seed_32.jsonl' -> 'upload-seed_32'
    tail = f"-{tag}" if tag else ""
    return shorten(f"{slug(teacher)}-to-{slug(student)}-{slug(data)}-{structure}", NAME_MAX - len(tail)) + tail


def list_exports(root: Path) -> list[dict]:
    """Exports under `root` (newest first): name, dir, created, teacher, student, rank, mode, modules
    and the whole manifest. An export whose paraknow.json is unreadable is left out (not an error)."""
    from paraknow.transfer.lora import load_manifest

    out = []
    if not root.is_dir():
        return out
    for d in root.iterdir():
        if d.name.startswith(".") or not (d / MANIFEST_FILE).is_file():
            continue
        try:
            m = load_manifest(d)
        except ParaknowError:
            continue
        modules = m.get("modules")
        out.append({"name": d.name, "dir": str(d), "created": str(m.get("created", "")), "teacher": m.get("teacher"),
                    "student": m.get("student"), "rank": m.get("rank"), "mode": m.get("mode"),
                    "structure": m.get("structure"), "modules": len(modules) if isinstance(modules, dict) else 0,
                    "manifest": m})
    return sorted(out, key=lambda r: r["created"], reverse=True)


def zip_dir(directory) -> bytes:
    """The export directory as zip bytes, paths relative to its parent (<name>/...)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ParaknowError(f"export folder {directory} does not exist any more; export again.")
    return zip_folder(directory)


def files_table(directory) -> list[dict]:
    directory = Path(directory)
    return [{"file": str(p.relative_to(directory)), "bytes": p.stat().st_size}
            for p in sorted(directory.rglob("*")) if p.is_file()]
