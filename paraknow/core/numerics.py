"""Float64 reductions of float32 (or half) tensors without a full-size float64 copy.

`torch.sum(x, dtype=torch.float64)` converts the whole input first: for a [128256, 8192] score
matrix that is 8 GiB on top of the 4 GiB it sums, and the conversion alone takes longer than the
sum. These helpers convert one block of rows at a time (at most 1 M entries, 8 MiB of float64, which
also stays in cache) in the tensor's memory order, so the peak stays at the input itself.
"""
from __future__ import annotations

import contextlib

import torch

CHUNK_ELEMS = 1 << 20  # entries converted to float64 at a time: cache-friendly, and few enough parallel
# regions that a busy machine (threads descheduled at every sync) does not slow the loops down badly


def row_blocks(n_rows: int, row_length: int):
    """(start, stop) ranges of rows of about CHUNK_ELEMS entries each."""
    step = max(1, CHUNK_ELEMS // max(1, row_length))
    return ((a, min(a + step, n_rows)) for a in range(0, n_rows, step))


def column_major(x: torch.Tensor) -> bool:
    """A 2-D view whose columns are contiguous (e.g. a transposed weight): walk it as x.t()."""
    return x.dim() == 2 and x.stride(0) < x.stride(1)


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """Any tensor as a 2-D row-major-walkable view (for whole-tensor reductions)."""
    if x.dim() == 2:
        return x.t() if column_major(x) else x
    return x.reshape(1, -1) if x.dim() < 2 else x.reshape(x.shape[0], -1)


def sum64(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """x.sum(dim, dtype=float64), block by block: the total (0-d) of any tensor, or the row sums
    (dim=1, [n]) or column sums (dim=0, [m]) of a 2-D one."""
    if x.dtype == torch.float64 or x.numel() <= CHUNK_ELEMS:
        return x.sum(dtype=torch.float64) if dim is None else x.sum(dim, dtype=torch.float64)
    if dim is None:
        rows = _as_rows(x)
        return sum((rows[a:b].sum(dtype=torch.float64) for a, b in row_blocks(*rows.shape)),
                   torch.zeros((), dtype=torch.float64, device=x.device))
    if x.dim() != 2:
        raise ValueError("sum64 sums along a dimension of 2-D tensors only")
    if column_major(x):
        return sum64(x.t(), 1 - dim)
    if dim == 0:
        total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)  # [m]
        for a, b in row_blocks(*x.shape):
            total += x[a:b].sum(0, dtype=torch.float64)
        return total
    return torch.cat([x[a:b].sum(1, dtype=torch.float64) for a, b in row_blocks(*x.shape)])  # [n]


def squared_norm64(x: torch.Tensor) -> float:
    """||x||_F^2 accumulated in float64, block by block."""
    rows = _as_rows(x)
    return sum(float(torch.linalg.vector_norm(rows[a:b], dtype=torch.float64)) ** 2
               for a, b in row_blocks(*rows.shape))


STAGING_BYTES = 256 << 20  # pinned host buffer the GPU copies through (allocated once per call)


def to_host_float32(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float32 host copies of `tensors`. GPU tensors go through one pinned staging buffer a slice at a
    time: a plain `.cpu()` of each takes the pageable path, which measured 1.1 GB/s on an H200 (45 s
    for a 13B map) against ~50 GB/s into pinned memory; pinning the whole map instead costs seconds
    per GB to allocate. Other tensors are converted and moved plainly (a float32 host tensor is
    returned as it is)."""
    out, staging = {}, None
    for name, tensor in tensors.items():
        if tensor.device.type != "cuda":
            out[name] = tensor.float().cpu()
            continue
        if staging is None:
            staging = torch.empty(STAGING_BYTES // 4, dtype=torch.float32, pin_memory=True)  # [n] flat
        source = tensor.detach().reshape(-1)  # [numel], any dtype; converted to float32 on the copy
        host = torch.empty(source.numel(), dtype=torch.float32)
        for start in range(0, source.numel(), staging.numel()):
            stop = min(start + staging.numel(), source.numel())
            staging[:stop - start].copy_(source[start:stop], non_blocking=True)
            torch.cuda.current_stream(tensor.device).synchronize()
            host[start:stop].copy_(staging[:stop - start])
        out[name] = host.view(tensor.shape)
    return out


class _Float32Linear(torch.autograd.Function):
    """y = x @ W.T + b computed in float32 for half-precision x and W, gradients returned in their dtypes.

    On a CPU without native bfloat16 matrix units (AVX2 only, `half_matmuls_are_slow`) PyTorch runs
    bfloat16 matrix products through a scalar fallback: measured 30x slower than float32 for a backward
    over Qwen2.5's 151,936-token head. Here each product converts its operands to float32 as it runs
    (one weight at a time, a large one in slices of rows: `weight_row_chunks`), which is what the native kernels do internally
    (float32 accumulation, one rounding of the result), so the gradients match the bfloat16 pass."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        x32 = x.float()  # [..., in]
        y = torch.empty(*x.shape[:-1], weight.shape[0], dtype=torch.float32, device=x.device)  # [..., out]
        for rows in weight_row_chunks(weight):
            y[..., rows] = x32 @ weight[rows].float().T
        if bias is not None:
            y += bias.float()
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        g = grad.float()  # [..., out]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # [..., in]
            for rows in weight_row_chunks(weight):
                grad_x += g[..., rows] @ weight[rows].float()
            grad_x = grad_x.to(x.dtype)
        if ctx.needs_input_grad[1]:
            g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1]).float()  # [tokens, out], [tokens, in]
            grad_w = torch.empty_like(weight)  # [out, in], the weight's dtype
            for rows in weight_row_chunks(weight):
                grad_w[rows] = (g2[:, rows].T @ x2).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.reshape(-1, g.shape[-1]).sum(0).to(weight.dtype)
        return grad_x, grad_w, grad_b


FLOAT32_ROWS_BYTES = 64 << 20  # float32 bytes of one weight's rows converted at a time by _Float32Linear


def weight_row_chunks(weight: torch.Tensor) -> list[slice]:
    """Row ranges of `weight` [out, ...] whose float32 copy is at most FLOAT32_ROWS_BYTES: a large weight (the
    1.5B teacher's 151,936 x 1,536 head, 0.9 GB in float32) is converted a slice at a time, so no float32 copy
    of the whole weight or of its whole gradient is ever held (one slice for ordinary ones and for vectors)."""
    if weight.dim() < 2:
        return [slice(None)]
    rows = max(1, FLOAT32_ROWS_BYTES // (4 * weight[0].numel()))
    return [slice(a, min(a + rows, weight.shape[0])) for a in range(0, weight.shape[0], rows)]


def half_matmuls_are_slow(model) -> bool:
    """Whether the model's matrices are bfloat16/float16 on a CPU that has no native kernels for them."""
    weight = model.get_input_embeddings().weight
    if weight.device.type != "cpu" or weight.dtype not in (torch.bfloat16, torch.float16):
        return False
    try:
        return not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        return True


@contextlib.contextmanager
def float32_matmuls(model):
    """Every nn.Linear of a half-precision CPU model computes through `_Float32Linear` meanwhile."""
    if not half_matmuls_are_slow(model):
        yield
        return
    patched = [m for m in model.modules() if type(m) is torch.nn.Linear]
    for m in patched:
        m.forward = lambda x, m=m: _Float32Linear.apply(x, m.weight, m.bias)
    try:
        yield
    finally:
        for m in patched:
            del m.forward
