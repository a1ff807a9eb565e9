"""Moving a sensitivity map from the GPU to the host: `to_host_float32` (through one pinned staging
buffer) against a plain `.float().cpu()` of each tensor, over the real map of a Llama-2-shaped model
with random weights (bf16 weights, float32 sums, 32 seed samples), in one process, alternating.

    python bench/bench_host_transfer.py [--preset llama2-7b] [--rounds 2] [--smoke] [--out FILE]

The map is the float32 size of the model (25 GiB for 7B, 48.5 GiB for 13B); the copy is the last
step of `compute_sensitivity`. --smoke: the tiny preset on the CPU (both sides are then plain copies).
"""
from __future__ import annotations

import argparse
import time

import torch
from bench_sensitivity_scale import build_random
from common import add_threads_option, set_threads, write_figures

from paraknow.core.models import quiet_transformers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama2-7b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="the tiny preset on the CPU (for the tests)")
    ap.add_argument("--out", default=None)
    add_threads_option(ap)
    args = ap.parse_args()
    set_threads(args.threads)
    if args.smoke:
        args.preset, args.device, args.rounds = "tiny", "cpu", 1
    quiet_transformers()
    from paraknow.core.data import encode_all, load_records
    from paraknow.core.models import load_model
    from paraknow.core.numerics import to_host_float32
    from paraknow.transfer.sensitivity import METRICS, SensitivityConfig

    _, tok = load_model("demo:teacher")
    model = build_random(args.preset, torch.bfloat16, args.device)
    items = encode_all(tok, load_records("task:arith:seed")[:32], 512)
    metric = METRICS["taylor-abs"]
    scores = metric.finish(model, metric.accumulate(model, items, SensitivityConfig(samples=32, max_length=512)))
    gib = sum(v.numel() * 4 for v in scores.values()) / 2**30
    staged, plain, equal = [], [], True
    for round_ in range(args.rounds):
        t0 = time.perf_counter()
        host = to_host_float32(scores)
        staged.append(time.perf_counter() - t0)
        names = list(scores)[:3] + list(scores)[-3:]
        equal = equal and all(torch.equal(host[n], scores[n].float().cpu()) for n in names)
        del host
        t0 = time.perf_counter()
        host = {n: s.float().cpu() for n, s in scores.items()}
        plain.append(time.perf_counter() - t0)
        del host
        print(f"round {round_ + 1}: {gib:.1f} GiB to the host: staged {staged[-1]:.2f} s ({gib / staged[-1]:.1f} GiB/s), "
              f"plain .cpu() {plain[-1]:.2f} s ({gib / plain[-1]:.1f} GiB/s); equal {equal}", flush=True)
    if args.out:
        write_figures(args.out, {"preset": args.preset, "device": args.device, "gib": gib, "staged_s": staged,
                                 "plain_s": plain, "equal": equal, "smoke": args.smoke})


if __name__ == "__main__":
    main()
