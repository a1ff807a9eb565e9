"""Parameter sensitivity on seed samples (docs/method.md): the metrics and the pass that computes them.

The paper's metric `taylor-abs`: for each seed sample separately, backpropagate its loss and
accumulate S += |theta * grad| element-wise, in float32. Each gradient is folded into the
accumulator the moment autograd finishes it (`register_post_accumulate_grad_hook`) and then
freed, so memory stays at weights + accumulator + one layer's gradients in flight.

The file format and cache live in paraknow.transfer.sensitivity_files, the summaries and the `SensitivityMap`
in paraknow.transfer.sensitivity_map; their public names are importable from here too.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..core import parallel
from ..core.data import Encoded, collate, encode_all, per_sample_loss
from ..core.errors import ParaknowError
from ..core.memory import SensitivityMemory, available_memory_bytes, estimate_sensitivity_memory
from ..core.models import resolve_device
from ..core.numerics import float32_matmuls, to_host_float32, weight_row_chunks
from ..core.options import option
from ..core.validate import MAX_LENGTH, check_count

Progress = Callable[[int, int, str], None]
Scores = dict[str, torch.Tensor]


ACCUMULATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ACCUMULATE_DEVICES = ("same", "cpu")  # next to each parameter, or in host memory


@dataclass
class SensitivityConfig:
    metric: str = option("taylor-abs", "sensitivity metric (taylor-abs is the paper's |theta * grad| per sample)",
                         choices=lambda: list(METRICS))
    samples: int = option(32, "number of seed samples (the first N records)", type=int)
    max_length: int = option(2048, "truncate each sample to this many tokens", type=int)
    batch_size: int = 8  # only `taylor-sum` and `wanda` batch samples
    accumulate_dtype: str = option("float32", "precision of the running sums (bfloat16 halves their memory)",
                                   choices=lambda: list(ACCUMULATE_DTYPES))
    accumulate_device: str = option("same", "keep the running sums next to each parameter (same) or in host "
                                    "memory (cpu)", choices=ACCUMULATE_DEVICES)

    def validate(self) -> None:
        if self.metric not in METRICS:
            raise ParaknowError(f"unknown metric '{self.metric}'; use one of {', '.join(METRICS)}.")
        check_count("samples", self.samples)
        check_count("max_length", self.max_length, minimum=8, maximum=MAX_LENGTH)
        check_count("batch_size", self.batch_size)
        if self.accumulate_dtype not in ACCUMULATE_DTYPES:
            raise ParaknowError(f"unknown --accumulate-dtype '{self.accumulate_dtype}'; use one of "
                                f"{', '.join(ACCUMULATE_DTYPES)}.")
        if self.accumulate_device not in ACCUMULATE_DEVICES:
            raise ParaknowError(f"unknown --accumulate-device '{self.accumulate_device}'; use one of "
                                f"{', '.join(ACCUMULATE_DEVICES)}.")


def _params(model) -> dict[str, torch.nn.Parameter]:
    return dict(model.named_parameters())  # tied weights appear once


def _input_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device  # with a device map: where the first layer sits


def _backward_passes(model, batches: list[list[Encoded]], loss_of, fold, progress: Progress | None,
                     unit: str) -> None:
    """One forward + backward per batch; `fold(name, param)` consumes each finished gradient."""
    params = _params(model)
    model.zero_grad(set_to_none=True)
    handles = []
    for name, param in params.items():
        param.requires_grad_(True)

        def hook(p, name=name):
            fold(name, p)
            p.grad = None  # free it at once: no full set of .grad tensors is ever held

        handles.append(param.register_post_accumulate_grad_hook(hook))
    device = _input_device(model)
    try:
        for i, batch_items in enumerate(batches):
            batch = {k: v.to(device) for k, v in collate(batch_items, pad_id=0).items()}
            with float32_matmuls(model):
                loss = loss_of(model, batch)
                if not torch.isfinite(loss):  # NaN/inf weights, or nothing to score: the map would be NaN
                    raise ParaknowError(f"seed {unit} {i + 1} gives a loss of {loss.item()}: the model's weights hold "
                                        "NaN or inf values, or the sample has no token to score; nothing was saved.")
                loss.backward()
            if progress:
                progress(i + 1, len(batches), f"{unit} {i + 1}/{len(batches)}: loss {loss.item():.3f}")
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)


def _sample_loss(model, batch):
    return model(**batch).loss  # one sample: its mean token loss


def _summed_sample_losses(model, batch):
    labels = batch.pop("labels")
    return per_sample_loss(model(**batch).logits, labels).sum()  # logits [b, s, V]


def _per_sample_backward(model, items: list[Encoded], fold, progress: Progress | None = None) -> None:
    """One forward + backward per sample; `fold(name, param)` consumes each finished gradient."""
    _backward_passes(model, [[item] for item in items], _sample_loss, fold, progress, "sample")


def _accumulators(model, dtype: torch.dtype = torch.float32, device: str = "same") -> Scores:
    return {n: torch.zeros(p.shape, dtype=dtype, device=p.device if device == "same" else device)
            for n, p in _params(model).items()}


def _add_into(acc: torch.Tensor, value: torch.Tensor) -> None:
    """acc += value in acc's precision, a slice of rows at a time. A bfloat16 gradient added to float32 sums
    is converted by the add into a float32 temporary of the whole operand (on a CPU): slice by slice that
    temporary stays at most FLOAT32_ROWS_BYTES instead of a float32 copy of the tied embedding's gradient
    (0.9 GB for the 1.5B teacher)."""
    value = value.to(acc.device)  # no copy when it is there already
    for rows in weight_row_chunks(acc):
        acc[rows].add_(value[rows])


def abs_grad_folder(grad_abs: Scores):
    """A fold that adds |g| of each finished gradient into `grad_abs` (in place on the gradient,
    which is discarded right after)."""
    def fold(name, p):
        _add_into(grad_abs[name], p.grad.abs_())
    return fold


def _times_param(sums: Scores, model, transform) -> Scores:
    """sums[name] *= transform(theta) in place, in the sums' precision -- the last step of the gradient
    metrics. `transform` gets theta in its own dtype (abs is exact there), a slice of rows at a time (the
    product's float32 temporary stays small, as in `_add_into`)."""
    for name, p in _params(model).items():
        theta = p.detach()
        for rows in weight_row_chunks(theta):
            sums[name][rows].mul_(transform(theta[rows]).to(sums[name].device))
    return sums


# A metric in two steps, so the seed samples can be split over processes (`parallel`):
# `accumulate(model, items, config, progress)` returns sums that add up across processes,
# `finish(model, sums)` turns the summed totals into the scores.


def taylor_abs_sums(model, items, config, progress=None) -> Scores:
    """sum over samples of |grad_sample|, folded in as each gradient arrives."""
    grad_abs = _accumulators(model, ACCUMULATE_DTYPES[config.accumulate_dtype], config.accumulate_device)
    _per_sample_backward(model, items, abs_grad_folder(grad_abs), progress)
    return grad_abs


def taylor_abs_finish(model, grad_abs: Scores) -> Scores:
    """sum over samples of |theta * grad_sample| (the paper's metric).

    theta is the same for every sample, so sum_i |theta * g_i| = |theta| * sum_i |g_i|: the hook
    folds |g_i| into the accumulator (two passes over each gradient instead of three) and |theta|
    multiplies once at the end.
    """
    return _times_param(grad_abs, model, torch.abs)


def fisher_sums(model, items, config, progress=None) -> Scores:
    """sum over samples of grad_sample^2."""
    acc = _accumulators(model, ACCUMULATE_DTYPES[config.accumulate_dtype], config.accumulate_device)

    def fold(name, p):
        for rows in weight_row_chunks(p.grad):
            acc[name][rows].add_(p.grad[rows].float().square_().to(acc[name].device))

    _per_sample_backward(model, items, fold, progress)
    return acc


def fisher_finish(model, acc: Scores) -> Scores:
    """theta^2 * sum over samples of grad_sample^2 (empirical Fisher diagonal)."""
    return _times_param(acc, model, lambda theta: theta.float().square())  # squared in float32, not bf16


def taylor_sum_sums(model, items, config, progress=None) -> Scores:
    """sum of the gradients of the per-sample mean losses, batched (signs cancel across samples)."""
    acc = _accumulators(model, ACCUMULATE_DTYPES[config.accumulate_dtype], config.accumulate_device)

    def fold(name, p):
        _add_into(acc[name], p.grad)

    batches = [items[i:i + config.batch_size] for i in range(0, len(items), config.batch_size)]
    _backward_passes(model, batches, _summed_sample_losses, fold, progress, "batch")
    return acc


def taylor_sum_finish(model, grad_sum: Scores) -> Scores:
    """|theta * sum of grads|."""
    for name, p in _params(model).items():
        theta = p.detach()
        for rows in weight_row_chunks(theta):
            grad_sum[name][rows].mul_(theta[rows].float().to(grad_sum[name].device)).abs_()
    return grad_sum


def no_sums(model, items=None, config=None, progress=None) -> Scores:
    return {}


def magnitude(model, sums=None) -> Scores:
    """|theta| (data-free baseline)."""
    return {n: p.detach().float().abs() for n, p in _params(model).items()}


def _input_modules(model) -> dict[str, torch.nn.Module]:
    """{weight name: module} of every Linear and Embedding (tied lm_head included: its key is dropped later)."""
    return {f"{name}.weight": m for name, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}


def wanda_sums(model, items, config, progress=None) -> Scores:
    """Squared L2 norm of each input feature over all real seed tokens (forward only).

    Linear [out, in] -> [in]; Embedding [V, d] -> [V], the count of each token.
    """
    modules = _input_modules(model)
    sq_norms = {key: torch.zeros(m.in_features if isinstance(m, torch.nn.Linear) else m.num_embeddings,
                                 device=m.weight.device) for key, m in modules.items()}
    current_mask: list[torch.Tensor] = []  # the batch's attention mask [b, s]: padding does not count
    handles = []
    for key, module in modules.items():
        if isinstance(module, torch.nn.Linear):
            def hook(mod, inputs, output, key=key):
                mask = current_mask[0].to(inputs[0].device)
                x = inputs[0].detach().float()[mask.bool()]  # [real tokens, in]
                sq_norms[key] += x.square().sum(0).to(sq_norms[key].device)
        else:
            def hook(mod, inputs, output, key=key):
                ids = inputs[0][current_mask[0].to(inputs[0].device).bool()]  # [real tokens]
                sq_norms[key] += torch.bincount(ids, minlength=mod.num_embeddings).float().to(sq_norms[key].device)
        handles.append(module.register_forward_hook(hook))
    device = _input_device(model)
    batch_size = config.batch_size
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
    return sq_norms


def wanda_finish(model, sq_norms: Scores) -> Scores:
    """|W| * L2 norm of each input feature over all seed tokens (Sun et al. 2023).

    Linear [out, in]: |W| * ||X[:, j]||; Embedding [V, d]: |W[v]| * sqrt(count of token v);
    other parameters (norms) fall back to |theta|.
    """
    scores = {}
    for name, p in _params(model).items():
        weight = p.detach().float().abs()
        if name in sq_norms and p.dim() == 2:
            norm = sq_norms[name].sqrt().to(weight.device)
            scores[name] = weight * (norm[None, :] if norm.numel() == p.shape[1] else norm[:, None])
        else:
            scores[name] = weight
    return scores


@dataclass(frozen=True)
class Metric:
    accumulate: Callable  # (model, items, config, progress) -> sums that add up across processes
    finish: Callable  # (model, summed sums) -> scores
    per_parameter_sums: bool = True  # the sums are as large as the model (False: forward-only)
    help: str = ""  # one line for the app's metric picker
    flops_per_param_token: int = 6  # the teacher's cost per parameter and seed token: 6 forward+backward, 2 forward


METRICS: dict[str, Metric] = {
    "taylor-abs": Metric(taylor_abs_sums, taylor_abs_finish,
                         help="the paper's: Σ over samples of |θ·∇L| (one backward per sample)"),
    "taylor-sum": Metric(taylor_sum_sums, taylor_sum_finish, help="|θ · Σ∇L|, one batched backward (faster; signs cancel)"),
    "fisher": Metric(fisher_sums, fisher_finish, help="θ² · Σ(∇L)² (empirical Fisher diagonal)"),
    "magnitude": Metric(no_sums, magnitude, per_parameter_sums=False, help="|θ| (data-free baseline)",
                        flops_per_param_token=0),
    "wanda": Metric(wanda_sums, wanda_finish, per_parameter_sums=False, flops_per_param_token=2,
                    help="|W| · ‖input activations‖ (forward only, for teachers too large to backpropagate)"),
}


def _memory(model_config, config: SensitivityConfig, dtype) -> SensitivityMemory:
    return estimate_sensitivity_memory(model_config, dtype, config.accumulate_dtype, config.accumulate_device == "cpu",
                                       config.max_length, METRICS[config.metric].per_parameter_sums)


def _budgets(device, max_memory: dict | None) -> tuple[int | None, int | None, bool]:
    """(bytes where the model runs, bytes on the host, whether the model runs on the host)."""
    host = (max_memory or {}).get("cpu") or available_memory_bytes("cpu")
    gpus = [v for k, v in (max_memory or {}).items() if isinstance(k, int)]
    target = ("auto" if gpus else "cpu") if max_memory else resolve_device(device)
    if target == "cpu":
        return host, host, True
    return (sum(gpus) if gpus else available_memory_bytes(target)), host, False


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def check_memory(model_config, config: SensitivityConfig, dtype=None, device=None,
                 max_memory: dict | None = None) -> SensitivityMemory:
    """The memory estimate before loading: raise with the settings that would fit when these do not."""
    config.validate()
    on_device, on_host, runs_on_host = _budgets(device, max_memory)

    def fits(mem: SensitivityMemory) -> bool:
        if runs_on_host:
            return on_host is None or mem.device_bytes() + mem.host_bytes() <= on_host
        return (on_device is None or mem.device_bytes() <= on_device) and (on_host is None or mem.host_bytes() <= on_host)

    memory = _memory(model_config, config, dtype)
    if fits(memory):
        return memory
    given = {"dtype": dtype or "float32", "accumulate_dtype": config.accumulate_dtype,
             "accumulate_device": config.accumulate_device}
    cheaper = {"dtype": "bfloat16", "accumulate_dtype": "bfloat16", "accumulate_device": "cpu"}
    changes = [(key, value) for key, value in cheaper.items() if given[key] != value]
    candidates = [dict(combo) for n in range(1, len(changes) + 1)  # fewest changes first
                  for combo in itertools.combinations(changes, n)]
    fitting = next((c for c in candidates if fits(_memory(model_config, replace(config, **{
        k: v for k, v in c.items() if k != "dtype"}), c.get("dtype", dtype)))), None)
    need = (f"about {_size(memory.device_bytes())} (weights {_size(memory.weights)} + sums {_size(memory.sums)} + "
            f"activations {_size(memory.activations)})"
            + (f" plus {_size(memory.host_bytes())} for the result" if runs_on_host else
               f" where the model runs and {_size(memory.host_bytes())} on the host"))
    room = (_size(on_host) if runs_on_host else f"{_size(on_device or 0)} there and {_size(on_host or 0)} on the host")
    advice = (" ".join(f"--{k.replace('_', '-')} {v}" for k, v in fitting.items()) + " would fit" if fitting else
              "no cheaper --dtype/--accumulate-dtype/--accumulate-device fits: lower --max-length, or spread the "
              "model over more GPUs with --device auto --max-memory")
    raise ParaknowError(f"the sensitivity pass needs {need}, but only {room} is available: {advice}.")


def compute_sensitivity(model, tokenizer, records: list[dict], config: SensitivityConfig | None = None,
                        progress: Progress | None = None) -> Scores:
    """Sensitivity of every parameter of `model` on the first `config.samples` records (float32, CPU).

    Under a multi-process launch (see `parallel`) process k takes samples k, k + N, ... and the
    sums are added across processes once at the end, so every process returns the whole map.
    """
    config = config or SensitivityConfig()
    config.validate()
    if len(records) < config.samples:
        raise ParaknowError(f"asked for {config.samples} seed samples but the data has only "
                            f"{len(records)}; lower --samples or give more data.")
    offloaded = [n for n, p in _params(model).items() if p.device.type == "meta"]
    if offloaded:  # accelerate keeps offloaded weights outside the parameters: no gradients, no |theta|
        raise ParaknowError(f"{len(offloaded)} parameters are offloaded to disk or host ({offloaded[0]}, ...): "
                            "give the devices more room with --max-memory, or use --dtype bfloat16.")
    rank, world_size = parallel.rank_and_size()
    items = encode_all(tokenizer, records[:config.samples], config.max_length)[rank::world_size]
    was_training = model.training
    model.eval()  # no dropout: the sensitivity of the model as it is
    metric = METRICS[config.metric]
    try:
        sums = metric.accumulate(model, items, config, progress if rank == 0 else None)
        parallel.all_reduce_sum(sums)
        scores = metric.finish(model, sums)
    except torch.OutOfMemoryError:
        raise ParaknowError("out of memory during the sensitivity pass: lower --max-length, use the "
                            "forward-only metric `wanda`, keep the sums on the host with --accumulate-device "
                            "cpu, or spread the model with --device auto.")
    finally:
        model.train(was_training)
    return check_scores(to_host_float32(scores))


def check_scores(scores: Scores) -> Scores:
    """A map is finite and not all zeros, or a ParaknowError naming what is wrong (never saved)."""
    broken = next((name for name, s in scores.items() if not torch.isfinite(s).all()), None)
    if broken is not None:
        raise ParaknowError(f"the sensitivity of {broken} is not finite: the model's weights hold NaN or inf "
                            "values; nothing was saved.")
    if not any(bool(s.any()) for s in scores.values()):
        raise ParaknowError("every sensitivity score is zero: the seed samples give the model no gradient; "
                            "nothing was saved.")
    return scores

SENSITIVITY_OPTIONS = ("metric", "samples", "max_length")  # what `extract` takes too

SENSITIVITY_COMMAND_OPTIONS = SENSITIVITY_OPTIONS + ("accumulate_dtype", "accumulate_device")
