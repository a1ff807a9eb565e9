"""The sensitivity file format and its cache: one float32 tensor per parameter name, JSON metadata in
the safetensors header (`paraknow` key); cache/sensitivity/<content key>.safetensors holds maps by the
model's weights, the seed records and the settings, so the same inputs are never computed twice.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
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
from .seeds import seed_losses

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


MAP_FILE_HELP = ("a map written by `paraknow sensitivity` to use instead of computing one (its model, metric, "
                 "samples and data sha256 are checked; --data defaults to the data it names)")
MAP_FILE_KEYS = ("model", "metric", "samples", "data_sha256")  # what `extract --sensitivity` checks


@dataclass
class MapFile:
    """A map written by `paraknow sensitivity`, read for `extract --sensitivity` / `plan --sensitivity`."""
    path: str
    scores: Scores  # parameter name -> float32 scores of its shape
    meta: dict  # the file's metadata (`sensitivity_meta`)
    config: SensitivityConfig  # the settings it was computed with (metric, samples, max_length)

    def report(self) -> dict:
        """What the commands print about the map they used: the file and its checked metadata."""
        return {"file": self.path, **{k: self.meta[k] for k in MAP_FILE_KEYS},
                "checked": "model, metric, samples, data sha256, parameter shapes"}


def read_map_file(path, teacher_ref: str, asked: dict | None = None) -> MapFile:
    """The map in `path` for teacher `teacher_ref`: its metadata must name that teacher, and agree with the
    sensitivity settings the user gave explicitly (`asked`: {"metric": ..., "samples": ...}); otherwise a
    ParaknowError gives the reason. The seed data and the teacher's shapes are checked by `check_map_data` and
    `check_map_model` once they are loaded."""
    from .sensitivity import SensitivityConfig

    scores, meta = load_sensitivity(path)
    missing = [k for k in MAP_FILE_KEYS if k not in meta]
    if missing:
        raise ParaknowError(f"{path} was not written by `paraknow sensitivity`: its metadata lacks "
                            f"{', '.join(missing)}; compute the map with `paraknow sensitivity --out FILE`.")
    if not _same_model(str(meta["model"]), teacher_ref):
        raise ParaknowError(f"{path} is the map of model {meta['model']}, not of --teacher {teacher_ref}: "
                            "give that teacher, or compute a map for this one with `paraknow sensitivity`.")
    for key, value in (asked or {}).items():
        if key in meta and meta[key] != value:
            raise ParaknowError(f"{path} was computed with {key} {meta[key]}, not {value}: drop --"
                                f"{key.replace('_', '-')} (the map's own setting is used) or compute a new map.")
    config = SensitivityConfig(metric=meta["metric"], samples=int(meta["samples"]),
                               **({"max_length": int(meta["max_length"])} if "max_length" in meta else {}))
    return MapFile(str(path), scores, meta, config)


def _same_model(a: str, b: str) -> bool:
    """Two model references name the same model: the same text, or the same local path."""
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def check_map_data(map_file: MapFile, records: list[dict], data_ref: str) -> None:
    """The seed data the map was computed on is `records` (their first `samples`), by sha256."""
    n = map_file.config.samples
    if len(records) < n or records_sha256(records[:n]) != map_file.meta["data_sha256"]:
        raise ParaknowError(f"{map_file.path} was computed on other seed data than the first {n} records of "
                            f"{data_ref} (data sha256 {map_file.meta['data_sha256'][:12]}... differs): give the "
                            "--data it was computed on, or compute a new map.")


def check_map_model(map_file: MapFile, model) -> None:
    """Every map entry is a parameter of `model` with the same shape."""
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for name, s in map_file.scores.items():
        if shapes.get(name) != tuple(s.shape):
            found = "has no such parameter" if name not in shapes else f"has shape {list(shapes[name])}"
            raise ParaknowError(f"{map_file.path}: entry {name} {list(s.shape)} does not fit the teacher, which "
                                f"{found}; compute the map for this teacher with `paraknow sensitivity`.")


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
    meta = sensitivity_meta(model_ref or getattr(model, "name_or_path", ""), config, records,
                            seed_losses=seed_losses(model, tokenizer, records[:config.samples], config.max_length))
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
