"""The sensitivity file format and its cache: one float32 tensor per parameter name, JSON metadata in
the safetensors header (`paraknow` key); cache/sensitivity/<content key>.safetensors holds maps by the
model's weights, the seed records and the settings, so the same inputs are never computed twice.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from safetensors import safe_open

from ..core import parallel
from ..core.cache import MARKER_FIELD, enforce_cap, marker, read_marker, touch
from ..core.errors import ParaknowError
from ..core.fsio import atomic_save_safetensors, check_output_path, check_writable_parent, output_lock, sha256_bytes
from ..core.models import model_fingerprint
from ..core.paths import cache_dir
from ..core.records import records_sha256

if TYPE_CHECKING:
    from .sensitivity import SensitivityConfig

Progress = Callable[[int, int, str], None]
Scores = dict[str, torch.Tensor]


def sensitivity_meta(model_ref: str, config: SensitivityConfig, records: list[dict], **extra) -> dict:
    """The metadata a sensitivity file records: model, settings, the seed data's hash, processes."""
    return {"model": model_ref, "metric": config.metric, "samples": config.samples,
            "max_length": config.max_length, **extra, "data_sha256": records_sha256(records[:config.samples]),
            "world_size": parallel.rank_and_size()[1]}


def scores_checksum(scores: Scores) -> str:
    """sha256 over the names and float32 bytes of a map (what a cache entry's marker stores)."""
    digest = hashlib.sha256()
    for name in sorted(scores):
        digest.update(name.encode() + b"\0")
        digest.update(memoryview(scores[name].detach().float().contiguous().cpu().numpy()).cast("B"))
    return digest.hexdigest()


def save_sensitivity(path, scores: Scores, metadata: dict, entry: dict | None = None) -> None:
    """Write a map; `entry` is the cache marker (paraknow.core.cache.marker) of a cached one."""
    header = {"paraknow": json.dumps(metadata, sort_keys=True)}
    if entry is not None:
        header[MARKER_FIELD] = json.dumps(entry, sort_keys=True)
    atomic_save_safetensors({k: v.float() for k, v in scores.items()}, path, metadata=header)


def check_output_file(path) -> None:
    """Where `sensitivity --out` may write: a new `.safetensors` file in a writable folder, or
    an earlier paraknow sensitivity file (replaced). Anything else raises before any work."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ParaknowError(f"--out must end in .safetensors (got {path.name}).")
    check_output_path(path)  # before anything stats it
    if path.is_dir():
        raise ParaknowError(f"--out {path} is a directory; give a file name ending in .safetensors.")
    if path.exists():
        try:
            with safe_open(str(path), framework="pt") as fh:
                ours = "paraknow" in (fh.metadata() or {})
        except Exception:  # noqa: BLE001 - unreadable: certainly not ours
            ours = False
        if not ours:
            raise ParaknowError(f"--out {path} exists and is not a paraknow sensitivity file; paraknow "
                                "never replaces it: choose another file name.")
    check_writable_parent(path)


def load_sensitivity(path) -> tuple[Scores, dict]:
    path = Path(path)
    if not path.is_file():
        raise ParaknowError(f"sensitivity file not found: {path}.")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("paraknow", "{}"))
            scores = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - any header/format problem is the user's file
        raise ParaknowError(f"{path} is not a paraknow sensitivity file ({exc}).") from None
    return scores, meta


def sensitivity_key(model, records: list[dict], config: SensitivityConfig, fingerprint: str | None = None) -> str:
    """Cache key from content: the model's weights (`fingerprint`: their `model_fingerprint`,
    when the caller already has it), the seed records used, and the settings."""
    payload = {"model": fingerprint or model_fingerprint(model), "data": records_sha256(records[:config.samples]),
               **asdict(config)}
    payload.pop("batch_size")
    payload.pop("accumulate_device")  # where the sums live does not change them
    if payload["accumulate_dtype"] == "float32":  # the default keeps the keys of maps cached before it existed
        payload.pop("accumulate_dtype")
    return sha256_bytes(json.dumps(payload, sort_keys=True).encode())[:32]


def cache_path(key: str) -> Path:
    """Where the map of content key `key` (`sensitivity_key`) is cached."""
    return cache_dir("sensitivity") / f"{key}.safetensors"


def cached_sensitivity(model, tokenizer, records, config: SensitivityConfig | None = None,
                       progress: Progress | None = None, model_ref: str | None = None) -> tuple[Scores, dict]:
    """compute_sensitivity through cache/sensitivity/<content key>.safetensors."""
    scores, meta, _ = cached_sensitivity_hit(model, tokenizer, records, config, progress, model_ref)
    return scores, meta


def cached_sensitivity_hit(model, tokenizer, records, config: SensitivityConfig | None = None,
                           progress: Progress | None = None, model_ref: str | None = None
                           ) -> tuple[Scores, dict, bool]:
    """`cached_sensitivity` plus whether the map came from the cache."""
    from .sensitivity import SensitivityConfig, compute_sensitivity

    config = config or SensitivityConfig()
    config.validate()

    key = sensitivity_key(model, records, config)
    path = cache_path(key)
    if path.exists():
        with output_lock(path, shared=True):  # keeps `cache clear` and eviction away meanwhile
            hit = _load_entry(path, key)
            if hit is not None:
                touch(path)
                return (*hit, True)
    scores = compute_sensitivity(model, tokenizer, records, config, progress)
    meta = sensitivity_meta(model_ref or getattr(model, "name_or_path", ""), config, records)
    save_sensitivity(path, scores, meta, marker("sensitivity", key, sha256=scores_checksum(scores)))
    enforce_cap(keep=path)
    return scores, meta, False


def _load_entry(path: Path, key: str) -> tuple[Scores, dict] | None:
    """The cached map of `key`, or None (a cache miss: computed again and replaced) when the file is
    damaged, unmarked (an older paraknow's), made for another key, or its content fails its checksum."""
    try:
        scores, meta = load_sensitivity(path)
    except ParaknowError:
        return None
    entry = read_marker(path) or {}
    if entry.get("kind") != "sensitivity" or entry.get("key") != key or entry.get("sha256") != scores_checksum(scores):
        return None
    return scores, meta


def provenance(teacher: str, student: str, data: str, sens_config, records: list[dict]) -> dict:
    """The manifest's record of where an export came from: model references, the seed data and the
    sensitivity settings (`records`: the seed records the map was computed on, or more)."""
    from ..core.records import records_sha256

    return {"teacher": teacher, "student": student, "data": data, "metric": sens_config.metric,
            "samples": sens_config.samples, "max_length": sens_config.max_length,
            "data_sha256": records_sha256(records[:sens_config.samples])}
