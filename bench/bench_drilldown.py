"""Heatmap drill-down speed: a 13824 x 5120 sensitivity matrix -> browser-ready figure.

    python bench/bench_drilldown.py [--repeats 5] [--threads N]

Measures what the Sensitivity and Mapping pages do when a matrix is opened: pool it to at most
256 x 256 cells, take its row and column marginals, build the plotly figure (heatmap, marginals,
the selected block) and serialise it to JSON for the browser. Printed side by side with the
floor, one float32 pass over the matrix (`scores.sum()`), and with what the browser would get
without pooling (the size of the full matrix as JSON). Target: well under a second.
"""
from __future__ import annotations

import argparse
import sys

import torch
from common import add_threads_option, set_threads, timeit

from paraknow import viz
from paraknow.extract import block_selection, select


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    add_threads_option(parser)
    parser.add_argument("--smoke", action="store_true", help="a small matrix, one repeat (seconds; for the tests)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    shape, sub = ((13824, 5120), (11008, 4096)) if not args.smoke else ((600, 300), (480, 240))  # Llama-2-13B gate_proj
    if args.smoke:
        args.repeats = 1
    scores = torch.rand(shape, generator=torch.Generator().manual_seed(0))  # [out, in]
    block = block_selection(min(1000, shape[0] - sub[0]), min(500, shape[1] - sub[1]), *sub, shape=shape)
    rowcol = select("rowcol", scores, *sub)

    floor, _ = timeit(lambda: scores.sum(), args.repeats)
    pool, _ = timeit(lambda: viz.pool_for_display(scores), args.repeats)
    fig_block, fig = timeit(lambda: viz.matrix_figure(scores, "gate_proj", selection=block), args.repeats)
    json_block, payload = timeit(lambda: viz.matrix_figure(scores, "gate_proj", selection=block).to_json(),
                                 args.repeats)
    fig_mask, _ = timeit(lambda: viz.matrix_figure(scores, "gate_proj", selection=rowcol).to_json(), args.repeats)
    full_json_bytes = scores.numel() * 10  # ~10 characters per float in JSON, had it not been pooled

    print(f"drill-down of a {shape[0]} x {shape[1]} float32 matrix (torch threads: {torch.get_num_threads()}, "
          f"median of {args.repeats})")
    print(f"{'step':46s} {'seconds':>9s} {'x floor':>8s}")
    for name, t in (("floor: one float32 pass (scores.sum())", floor),
                    ("pool to 256x256 + marginals", pool),
                    ("figure with the selected block", fig_block),
                    ("figure with the block + JSON for the browser", json_block),
                    ("figure with a row/col mask + JSON", fig_mask)):
        print(f"{name:46s} {t:9.3f} {t / floor:8.1f}")
    print(f"payload to the browser: {len(payload) / 1e6:.2f} MB pooled vs ~{full_json_bytes / 1e9:.2f} GB unpooled "
          f"({full_json_bytes / len(payload):,.0f}x smaller)")
    print(f"target: well under 1 s for the whole drill-down -> {'OK' if json_block < 1.0 else 'SLOW'} "
          f"({json_block:.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
