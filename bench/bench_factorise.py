"""Truncated factorisation speed and accuracy: randomized vs exact SVD, side by side.

    python bench/bench_factorise.py [--smoke] [--threads N] [--out bench/out/factorise.json]

Full size: one Llama-2-7B FFN block [11008, 4096] -> rank 16, through `factorise` with
svd='exact' (LAPACK, float64) and svd='randomized' (the default for blocks this large). The block
is random with a spiked spectrum like a trained weight's: a noise bulk plus 64 directions of
power-law strength. Prints the speed ratio (target >= 20x) and each method's relative Frobenius
error ||W - s B A||_F / ||W||_F (target: randomized within 1 % of exact). --smoke: a
[1100, 410] block, for the test suite (no targets asserted).
"""
from __future__ import annotations

import torch
from common import parse_scale_args, scale_parser, timeit, write_figures

from paraknow.transfer.lora import OVERSAMPLE, POWER_ITERATIONS, factorise, scaling

RANK, ALPHA = 16, 16


def spiked_block(out_dim: int, in_dim: int, spikes: int = 64, seed: int = 0) -> torch.Tensor:
    """Noise of unit-order singular values plus `spikes` directions of strength 8 * k ** -0.5: [out, in]."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(out_dim, in_dim, generator=g) / in_dim ** 0.5  # bulk singular values ~ 1 + sqrt(o/i)
    U = torch.linalg.qr(torch.randn(out_dim, spikes, generator=g)).Q  # [o, k]
    V = torch.linalg.qr(torch.randn(in_dim, spikes, generator=g)).Q  # [i, k]
    strength = 8 * torch.arange(1, spikes + 1, dtype=torch.float32) ** -0.5
    return noise + (U * strength) @ V.T


def relative_error(block: torch.Tensor, factors) -> float:
    approx = scaling(RANK, ALPHA) * (factors.B.double() @ factors.A.double())  # [out, in]
    return float(torch.linalg.norm(block.double() - approx) / torch.linalg.norm(block.double()))


def main():
    args = parse_scale_args(scale_parser("tiny block, one repeat (for the test suite)"))
    shape = (1100, 410) if args.smoke else (11008, 4096)
    block = spiked_block(*shape)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; block {list(shape)} -> rank {RANK}; "
          f"randomized: {OVERSAMPLE} oversampled directions, {POWER_ITERATIONS} subspace iterations\n")
    t_rand, rand = timeit(lambda: factorise(block, RANK, ALPHA, svd="randomized"), 1 if args.smoke else 3)
    t_exact, exact = timeit(lambda: factorise(block, RANK, ALPHA, svd="exact"), 1)
    err_rand, err_exact = relative_error(block, rand), relative_error(block, exact)
    speedup, excess = t_exact / t_rand, err_rand / err_exact - 1
    print(f"  {'method':<12}{'time':>10}{'rel. error':>14}{'energy':>12}")
    for name, t, err, f in (("exact", t_exact, err_exact, exact), ("randomized", t_rand, err_rand, rand)):
        print(f"  {name:<12}{t:>9.2f}s{err:>14.6f}{f.energy:>12.6f}")
    print(f"\n  speed-up: {speedup:.1f}x (target >= 20x): {'PASS' if speedup >= 20 else 'FAIL'}")
    print(f"  randomized error vs exact: {excess * 100:+.4f} % (target <= 1 %): "
          f"{'PASS' if excess <= 0.01 else 'FAIL'}")
    if args.out:
        write_figures(args.out, {
            "shape": list(shape), "rank": RANK, "threads": torch.get_num_threads(),
            "seconds": {"exact": t_exact, "randomized": t_rand}, "speedup": speedup,
            "relative_error": {"exact": err_exact, "randomized": err_rand}, "error_excess": excess,
            "energy": {"exact": exact.energy, "randomized": rand.energy}})


if __name__ == "__main__":
    main()
