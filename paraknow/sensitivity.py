"""Parameter sensitivity on seed samples (SPEC section 2.2), its file format and its summaries.

The paper's metric `taylor-abs`: for each seed sample separately, backpropagate its loss and
accumulate S += |theta * grad| element-wise, in float32. Each gradient is folded into the
accumulator the moment autograd finishes it (`register_post_accumulate_grad_hook`) and then
freed, so memory stays at weights + accumulator + one layer's gradients in flight.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open

from .data import Encoded, collate, encode_all, per_sample_loss, records_sha256
from .errors import ParaknowError
from .fsio import atomic_save_safetensors, sha256_bytes
from .models import ATTN_ROLES, FFN_ROLES, layer_of, model_fingerprint, role_of
from .paths import cache_dir

Progress = Callable[[int, int, str], None]
Scores = dict[str, torch.Tensor]


@dataclass
class SensitivityConfig:
    metric: str = "taylor-abs"
    samples: int = 32
    max_length: int = 2048
    batch_size: int = 8  # only `taylor-sum` and `wanda` batch samples

    def validate(self) -> None:
        if self.metric not in METRICS:
            raise ParaknowError(f"unknown metric '{self.metric}'; use one of {', '.join(METRICS)}.")
        if self.samples < 1:
            raise ParaknowError("--samples must be at least 1.")
        if self.max_length < 8:
            raise ParaknowError("--max-length must be at least 8 tokens.")


def _params(model) -> dict[str, torch.nn.Parameter]:
    return dict(model.named_parameters())  # tied weights appear once


def _per_sample_backward(model, items: list[Encoded], fold, progress: Progress | None) -> None:
    """One forward + backward per sample; `fold(name, param)` consumes each finished gradient."""
    params = _params(model)
    handles = []
    for name, param in params.items():
        param.requires_grad_(True)

        def hook(p, name=name):
            fold(name, p)
            p.grad = None  # free it at once: no full set of .grad tensors is ever held

        handles.append(param.register_post_accumulate_grad_hook(hook))
    device = model.get_input_embeddings().weight.device
    try:
        for i, item in enumerate(items):
            batch = {k: v.to(device) for k, v in collate([item], pad_id=0).items()}
            loss = model(**batch).loss
            loss.backward()
            if progress:
                progress(i + 1, len(items), f"sample {i + 1}/{len(items)}: loss {loss.item():.3f}")
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)


def _accumulators(model) -> Scores:
    return {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in _params(model).items()}


def abs_grad_folder(grad_abs: Scores):
    """A fold that adds |g| of each finished gradient into `grad_abs` (in place on the gradient,
    which is discarded right after)."""
    def fold(name, p):
        grad = p.grad if p.grad.dtype == torch.float32 else p.grad.float()
        grad_abs[name].add_(grad.abs_())
    return fold


def taylor_abs(model, items, progress=None) -> Scores:
    """sum over samples of |theta * grad_sample| (the paper's metric).

    theta is the same for every sample, so sum_i |theta * g_i| = |theta| * sum_i |g_i|: the hook
    folds |g_i| into the accumulator (two passes over each gradient instead of three) and |theta|
    multiplies once at the end.
    """
    grad_abs = _accumulators(model)
    _per_sample_backward(model, items, abs_grad_folder(grad_abs), progress)
    for name, p in _params(model).items():
        grad_abs[name].mul_(p.detach().float().abs())
    return grad_abs


def fisher(model, items, progress=None) -> Scores:
    """theta^2 * sum over samples of grad_sample^2 (empirical Fisher diagonal)."""
    acc = _accumulators(model)

    def fold(name, p):
        grad = p.grad if p.grad.dtype == torch.float32 else p.grad.float()
        acc[name].addcmul_(grad, grad)

    _per_sample_backward(model, items, fold, progress)
    for name, p in _params(model).items():
        acc[name].mul_(p.detach().float().square())
    return acc


def taylor_sum(model, items, progress=None, batch_size: int = 8) -> Scores:
    """|theta * sum of grads|: per-sample mean losses summed, batched backward (faster, signs cancel)."""
    params = _params(model)
    for p in params.values():
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    device = model.get_input_embeddings().weight.device
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id=0).items()}
        labels = batch.pop("labels")
        logits = model(**batch).logits  # [b, s, V]
        per_sample_loss(logits, labels).sum().backward()
        if progress:
            progress(min(start + batch_size, len(items)), len(items), f"batch {start // batch_size + 1}")
    scores = {n: (p.detach().float() * p.grad.float()).abs() if p.grad is not None
              else torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()}
    model.zero_grad(set_to_none=True)
    return scores


def magnitude(model, items=None, progress=None) -> Scores:
    """|theta| (data-free baseline)."""
    return {n: p.detach().float().abs() for n, p in _params(model).items()}


def wanda(model, items, progress=None, batch_size: int = 8) -> Scores:
    """|W| * L2 norm of each input feature over all seed tokens (forward only, Sun et al. 2023).

    Linear [out, in]: |W| * ||X[:, j]||; Embedding [V, d]: |W[v]| * sqrt(count of token v);
    other parameters (norms) fall back to |theta|.
    """
    sq_norms: dict[str, torch.Tensor] = {}
    current_mask: list[torch.Tensor] = []  # the batch's attention mask [b, s]: padding does not count
    handles = []
    for mod_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            def hook(mod, inputs, output, key=mod_name + ".weight"):
                mask = current_mask[0].to(inputs[0].device)
                x = inputs[0].detach().float()[mask.bool()]  # [real tokens, in]
                sq_norms[key] = sq_norms.get(key, 0) + x.square().sum(0)
            handles.append(module.register_forward_hook(hook))
        elif isinstance(module, torch.nn.Embedding):
            def hook(mod, inputs, output, key=mod_name + ".weight"):
                ids = inputs[0][current_mask[0].to(inputs[0].device).bool()]  # [real tokens]
                counts = torch.bincount(ids, minlength=mod.num_embeddings).float()
                sq_norms[key] = sq_norms.get(key, 0) + counts.to(mod.weight.device)
            handles.append(module.register_forward_hook(hook))
    device = model.get_input_embeddings().weight.device
    try:
        with torch.no_grad():
            for start in range(0, len(items), batch_size):
                chunk = items[start:start + batch_size]
                batch = {k: v.to(device) for k, v in collate(chunk, pad_id=0).items()}
                batch.pop("labels")
                current_mask[:] = [batch["attention_mask"]]
                model(**batch)
                if progress:
                    progress(min(start + batch_size, len(items)), len(items), f"batch {start // batch_size + 1}")
    finally:
        for handle in handles:
            handle.remove()
    scores = {}
    for name, p in _params(model).items():
        weight = p.detach().float().abs()
        if name in sq_norms and p.dim() == 2:
            norm = sq_norms[name].sqrt()
            scores[name] = weight * (norm[None, :] if norm.numel() == p.shape[1] else norm[:, None])
        else:
            scores[name] = weight
    return scores


METRICS: dict[str, Callable] = {
    "taylor-abs": taylor_abs, "taylor-sum": taylor_sum, "fisher": fisher,
    "magnitude": magnitude, "wanda": wanda,
}


def compute_sensitivity(model, tokenizer, records: list[dict], config: SensitivityConfig | None = None,
                        progress: Progress | None = None) -> Scores:
    """Sensitivity of every parameter of `model` on the first `config.samples` records (float32, CPU)."""
    config = config or SensitivityConfig()
    config.validate()
    if len(records) < config.samples:
        raise ParaknowError(f"asked for {config.samples} seed samples but the data has only "
                            f"{len(records)}; lower --samples or give more data.")
    items = encode_all(tokenizer, records[:config.samples], config.max_length)
    was_training = model.training
    model.eval()  # no dropout: the sensitivity of the model as it is
    try:
        metric = METRICS[config.metric]
        kwargs = {"batch_size": config.batch_size} if config.metric in ("taylor-sum", "wanda") else {}
        scores = metric(model, items, progress, **kwargs)
    except torch.OutOfMemoryError:
        raise ParaknowError("out of memory during the sensitivity pass: lower --max-length, use the "
                            "forward-only metric `wanda`, or spread the model with --device auto.")
    finally:
        model.train(was_training)
    return {name: s.cpu() for name, s in scores.items()}


# ---------------------------------------------------------------------------------------
# File format: one float32 tensor per parameter name, JSON metadata in the header.


def save_sensitivity(path, scores: Scores, metadata: dict) -> None:
    atomic_save_safetensors({k: v.float() for k, v in scores.items()}, path,
                            metadata={"paraknow": json.dumps(metadata, sort_keys=True)})


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


def sensitivity_key(model, records: list[dict], config: SensitivityConfig) -> str:
    """Cache key from content: the model's weights, the seed records used, and the settings."""
    payload = {"model": model_fingerprint(model), "data": records_sha256(records[:config.samples]),
               **asdict(config)}
    payload.pop("batch_size")
    return sha256_bytes(json.dumps(payload, sort_keys=True).encode())[:32]


def cached_sensitivity(model, tokenizer, records, config: SensitivityConfig | None = None,
                       progress: Progress | None = None, model_ref: str | None = None) -> tuple[Scores, dict]:
    """compute_sensitivity through cache/sensitivity/<content key>.safetensors."""
    config = config or SensitivityConfig()
    config.validate()
    path = cache_dir("sensitivity") / f"{sensitivity_key(model, records, config)}.safetensors"
    if path.exists():
        return load_sensitivity(path)
    scores = compute_sensitivity(model, tokenizer, records, config, progress)
    meta = {"model": model_ref or getattr(model, "name_or_path", ""), "metric": config.metric,
            "samples": config.samples, "max_length": config.max_length,
            "data_sha256": records_sha256(records[:config.samples])}
    save_sensitivity(path, scores, meta)
    return scores, meta


# ---------------------------------------------------------------------------------------
# Summaries for the pages.

MODULE_ORDER = ATTN_ROLES + FFN_ROLES


def module_table(scores: Scores) -> list[dict]:
    """One row per (layer, module role): `layer`, `module`, `sum`, `mean`, `numel`."""
    rows = []
    for name, s in scores.items():
        layer, role = layer_of(name), role_of(name)
        if layer is None or role is None:
            continue
        rows.append({"layer": layer, "module": role, "sum": float(s.double().sum()),
                     "mean": float(s.double().mean()), "numel": s.numel(), "param": name})
    rows.sort(key=lambda r: (r["layer"], MODULE_ORDER.index(r["module"])))
    return rows


def group_shares(scores: Scores) -> dict[str, float]:
    """Share of total sensitivity in attention, FFN, embeddings and everything else (norms)."""
    totals = {"attention": 0.0, "ffn": 0.0, "embeddings": 0.0, "other": 0.0}
    for name, s in scores.items():
        role = role_of(name)
        group = ("attention" if role in ATTN_ROLES else "ffn" if role in FFN_ROLES
                 else "embeddings" if role in ("embed_tokens", "lm_head") else "other")
        totals[group] += float(s.double().sum())
    grand = sum(totals.values()) or 1.0
    return {k: v / grand for k, v in totals.items()}


def marginals(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row sums [out] and column sums [in] of a 2-D score matrix, in float64."""
    return matrix.sum(1, dtype=torch.float64), matrix.sum(0, dtype=torch.float64)


def pooled(matrix: torch.Tensor, max_rows: int = 256, max_cols: int = 256, reduce: str = "mean") -> torch.Tensor:
    """Block-pool a 2-D matrix down to at most [max_rows, max_cols] for display.

    Uses adaptive pooling so any shape works; `reduce` is `mean` or `max`.
    """
    if matrix.dim() == 1:
        matrix = matrix[None, :]
    out_rows, out_cols = min(max_rows, matrix.shape[0]), min(max_cols, matrix.shape[1])
    x = matrix.float()[None, None]  # [1, 1, out, in]
    pool = torch.nn.functional.adaptive_avg_pool2d if reduce == "mean" else torch.nn.functional.adaptive_max_pool2d
    return pool(x, (out_rows, out_cols))[0, 0]
