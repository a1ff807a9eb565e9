"""One architecture description for every supported family (`ModelInfo`), read from a config alone or
from a loaded model: layer count, widths, heads, the [out, in] shape of each module role, and the
names of its weights. Everything that reasons about shapes (compatibility, plans, memory) reads this.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field

import torch

from .errors import ParaknowError
from .options import DTYPE_NAMES

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")

# Module roles and where they sit inside a decoder layer (all supported families agree).
ATTN_ROLES = ("q_proj", "k_proj", "v_proj", "o_proj")
FFN_ROLES = ("gate_proj", "up_proj", "down_proj")
EMBED_ROLES = ("embed_tokens", "lm_head")
LAYER_ROLES = ATTN_ROLES + FFN_ROLES
ROLE_PATH = {**{r: f"self_attn.{r}" for r in ATTN_ROLES}, **{r: f"mlp.{r}" for r in FFN_ROLES}}
MODULE_GROUPS = {"attn": ATTN_ROLES, "ffn": FFN_ROLES, "embed": EMBED_ROLES}

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


SIZE_FIELDS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")


def check_family(config) -> None:
    """A supported family whose sizes are whole numbers at least 1 (a damaged or hostile config.json,
    e.g. num_hidden_layers -3, is named before a model is built from it)."""
    cfg = _text_config(config)
    model_type = getattr(cfg, "model_type", None)
    if model_type not in SUPPORTED_FAMILIES:
        raise ParaknowError(
            f"model family '{model_type}' is not supported; supported families are "
            f"{', '.join(SUPPORTED_FAMILIES)} (all with q/k/v/o and gate/up/down projections).")
    for name in SIZE_FIELDS + ("num_key_value_heads",):
        value = getattr(cfg, name, None)
        if (value is not None or name in SIZE_FIELDS) and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ParaknowError(f"the model's config.json has {name} = {value!r}, not a whole number at least 1: "
                                "the config is damaged; download or save the model again.")


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



def resolve_dtype(dtype) -> torch.dtype:
    """None (float32), a torch dtype, or a name in DTYPES -> the torch dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ParaknowError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}.")
    return DTYPES[dtype]
