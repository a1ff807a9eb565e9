"""Submatrix search speed: `max_sum_block` against the reference loop and the floor.

    python bench/bench_submatrix.py [--quick] [--threads N]   (default 1 thread; 0 = one per core)
    python bench/bench_submatrix.py --quick --out docs/results/bench_submatrix.json

Small case [1536, 576] -> [1024, 384]: max_sum_block vs the position-by-position Python loop
over a float64 prefix sum (`max_sum_block_reference`, torch indexing as in the paper's code);
target >= 100x. The same loop on Python floats is shown too (about 20x slower than
max_sum_block there: below ~0.5 ms the float64 floor itself gets in the way).
Llama case [13824, 5120] -> [11008, 4096]: max_sum_block vs the floor, one float64 pass
(`scores.double().sum()`), and vs a plain vectorised 2-D prefix-sum search; target <= 3x floor.
"""
from __future__ import annotations

import argparse

import torch
from common import add_threads_option, set_threads, timeit, write_figures

from paraknow.extract import max_sum_block, max_sum_block_reference


def prefix_sums(scores):
    """Textbook 2-D prefix sum in float64 with a zero first row and column: [o + 1, i + 1]."""
    P = torch.zeros(scores.shape[0] + 1, scores.shape[1] + 1, dtype=torch.float64)
    P[1:, 1:] = scores.double().cumsum(0).cumsum(1)
    return P


def plain_prefix_block(scores, h, w):
    """Vectorised textbook version: full 2-D prefix sum, all box sums, first argmax."""
    P = prefix_sums(scores)
    box = P[h:, w:] - P[:-h, w:] - P[h:, :-w] + P[:-h, :-w]
    return divmod(int(box.view(-1).argmax()), box.shape[1])


def python_float_loop(scores, h, w):
    """The same loop on Python floats (`tolist()`), the fastest a pure-Python loop gets."""
    o, i = scores.shape
    P = prefix_sums(scores).tolist()
    best, pos = -float("inf"), (0, 0)
    for r in range(o - h + 1):
        top, bot = P[r], P[r + h]
        for c in range(i - w + 1):
            s = bot[c + w] - top[c + w] - bot[c] + top[c]
            if s > best:
                best, pos = s, (r, c)
    return pos


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    add_threads_option(ap, default=1)  # one thread: what a study cell gets, and steady on a shared CPU
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, one repeat (seconds; for the tests)")
    ap.add_argument("--out", default=None, help="also write the figures (with provenance) as JSON here")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    reps = 1 if args.smoke else 3 if args.quick else 7
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {reps} runs "
          "(small case: 3x as many for max_sum_block; the reference loop runs once)\n")

    # small case ----------------------------------------------------------------------------
    shape, blk = ((1536, 576), (1024, 384)) if not args.smoke else ((48, 24), (32, 16))
    s = torch.rand(shape)
    n_pos = (shape[0] - blk[0] + 1) * (shape[1] - blk[1] + 1)
    max_sum_block(s, *blk)  # warm-up
    t_fast, pos_fast = timeit(lambda: max_sum_block(s, *blk), reps * 3)
    t_ref, pos_ref = timeit(lambda: max_sum_block_reference(s, *blk), 1)
    t_list, pos_list = timeit(lambda: python_float_loop(s, *blk), 3)
    t_plain, pos_plain = timeit(lambda: plain_prefix_block(s, *blk), reps)
    print(f"[{shape[0]}, {shape[1]}] -> [{blk[0]}, {blk[1]}]  ({n_pos} block positions)")
    print(f"  {'method':<52}{'time':>10}{'ratio':>10}")
    print(f"  {'max_sum_block':<52}{t_fast * 1e3:>8.2f}ms{1:>9.1f}x")
    rows = [("reference loop (max_sum_block_reference, 1 run)", t_ref),
            ("same loop on Python floats (tolist)", t_list),
            ("plain 2-D prefix sum, vectorised", t_plain)]
    for name, t in rows:
        print(f"  {name:<52}{t * 1e3:>8.2f}ms{t / t_fast:>9.1f}x")
    same = pos_fast == pos_ref == pos_list == pos_plain
    print(f"  same answer: {'yes' if same else 'NO'} {pos_fast} (reference {pos_ref})")
    print(f"  speed-up vs reference loop: {t_ref / t_fast:.0f}x (target >= 100x): "
          f"{'PASS' if t_ref / t_fast >= 100 else 'FAIL'}\n")
    small = {"shape": list(shape), "block": list(blk), "max_sum_block_ms": round(t_fast * 1e3, 3),
             "reference_loop_ms": round(t_ref * 1e3, 1), "python_floats_ms": round(t_list * 1e3, 1),
             "plain_prefix_ms": round(t_plain * 1e3, 2), "same_answer": same,
             "speedup_vs_reference": round(t_ref / t_fast, 1), "target": ">= 100x"}

    # Llama case ----------------------------------------------------------------------------
    shape, blk = ((13824, 5120), (11008, 4096)) if not args.smoke else ((96, 48), (64, 32))
    s = torch.rand(shape)
    t_floor, _ = timeit(lambda: s.double().sum(), reps)
    t_fast, pos_fast = timeit(lambda: max_sum_block(s, *blk), reps)
    t_plain, pos_plain = timeit(lambda: plain_prefix_block(s, *blk), 3)
    print(f"[{shape[0]}, {shape[1]}] -> [{blk[0]}, {blk[1]}]")
    print(f"  {'method':<52}{'time':>10}{'vs floor':>10}")
    print(f"  {'floor: scores.double().sum()':<52}{t_floor * 1e3:>8.1f}ms{1:>9.2f}x")
    print(f"  {'max_sum_block':<52}{t_fast * 1e3:>8.1f}ms{t_fast / t_floor:>9.2f}x")
    print(f"  {'plain 2-D prefix sum, vectorised':<52}{t_plain * 1e3:>8.1f}ms{t_plain / t_floor:>9.2f}x")
    print(f"  same answer as plain prefix sum: {'yes' if pos_fast == pos_plain else 'NO'} {pos_fast}")
    print(f"  max_sum_block / floor = {t_fast / t_floor:.2f}x (target <= 3x): "
          f"{'PASS' if t_fast / t_floor <= 3 else 'FAIL'}")
    large = {"shape": list(shape), "block": list(blk), "floor_ms": round(t_floor * 1e3, 1),
             "max_sum_block_ms": round(t_fast * 1e3, 1), "plain_prefix_ms": round(t_plain * 1e3, 1),
             "same_answer": pos_fast == pos_plain, "vs_floor": round(t_fast / t_floor, 3), "target": "<= 3x"}
    if args.out:
        write_figures(args.out, {"threads": threads, "repeats": reps, "small": small, "llama": large})


if __name__ == "__main__":
    main()
