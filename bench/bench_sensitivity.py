"""Sensitivity pass vs plain forward+backward over the same seeds.

Time: the two alternate round by round in one process (same machine load for both) and the
median rounds are compared, so the ratio holds on a busy machine. Only public functions are used:
paraknow's side is `compute_sensitivity` itself (tokenisation and the final |theta| multiply
included), the plain side tokenises with `encode_all` and runs forward + backward per sample. Memory: each runs in a fresh subprocess and reports
its peak (CPU: peak RSS during the pass above the RSS before loading the model; CUDA: max_memory_allocated),
as a ratio to the model's float32 size.

    python bench/bench_sensitivity.py --model bundled:smollm2-135m-instruct \
        --data ../shared/data/gsm/seed_32.jsonl --samples 32 [--dtype bfloat16] \
        [--accumulate-dtype float32|bfloat16] [--accumulate-device same|cpu] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from common import add_threads_option, set_threads, write_figures

from paraknow.core.data import collate, encode_all, load_records
from paraknow.core.models import load_model, quiet_transformers
from paraknow.transfer.sensitivity import SensitivityConfig, compute_sensitivity


def _proc_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field))


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as fh:  # "5" resets VmHWM (peak RSS) to the current RSS
        fh.write("5")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plain_pass(model, tok, records, max_length, device) -> None:
    """What a user would write: tokenise, then forward + backward per sample (autograd fills .grad)."""
    for item in encode_all(tok, records, max_length):
        model(**{k: v.to(device) for k, v in collate([item], 0).items()}).loss.backward()
    model.zero_grad(set_to_none=True)


def time_alternating(args) -> dict:
    """Plain passes and paraknow's `compute_sensitivity` over the same seeds, alternating round by
    round in one process (same machine load for both); the median round of each is compared."""
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    device = str(model.get_input_embeddings().weight.device)
    records = load_records(args.data)[: args.samples]
    config = _config(args, len(records))
    plain, ours = [], []
    for round_ in range(args.rounds):
        sync(device)
        t0 = time.perf_counter()
        plain_pass(model, tok, records, args.max_length, device)
        sync(device)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        compute_sensitivity(model, tok, records, config)
        sync(device)
        ours.append(time.perf_counter() - t0)
        print(f"round {round_ + 1}: plain {plain[-1]:.2f} s, paraknow {ours[-1]:.2f} s", file=sys.stderr, flush=True)
    tokens = sum(len(i.input_ids) for i in encode_all(tok, records, args.max_length))
    return {"plain_s": statistics.median(plain), "paraknow_s": statistics.median(ours), "samples": len(records),
            "tokens": tokens, "device": device}


def _config(args, samples: int) -> SensitivityConfig:
    return SensitivityConfig(samples=samples, max_length=args.max_length, accumulate_dtype=args.accumulate_dtype,
                             accumulate_device=args.accumulate_device)


def peak_memory(args) -> dict:
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    before_kb = _proc_kb("VmRSS")
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    _reset_peak_rss()  # loading's own transient copies are not the pass's peak
    model_bytes = sum(p.numel() for p in model.parameters()) * 4
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    records = load_records(args.data)[: args.samples]
    if args.mode == "plain":
        plain_pass(model, tok, records, args.max_length, str(model.get_input_embeddings().weight.device))
    else:
        compute_sensitivity(model, tok, records, _config(args, args.samples))
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = (_proc_kb("VmHWM") - before_kb) * 1024
    return {"peak_bytes": peak, "model_fp32_bytes": model_bytes, "weight_bytes": weight_bytes}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="demo:teacher")
    parser.add_argument("--data", default="task:arith:seed")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--memory-samples", type=int, default=4,
                        help="samples for the peak-memory runs (the peak does not grow with the count)")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="the teacher's weights (bfloat16: the 1.6x target)")
    parser.add_argument("--accumulate-dtype", default="float32")
    parser.add_argument("--accumulate-device", default="same")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (median compared)")
    parser.add_argument("--smoke", action="store_true", help="2 samples of 64 tokens, one round (seconds; for the tests)")
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--mode", choices=["plain", "paraknow"], help=argparse.SUPPRESS)
    add_threads_option(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    if args.smoke:
        args.samples, args.memory_samples, args.max_length, args.rounds = 2, 1, 64, 1
    quiet_transformers()
    if args.mode:  # child process: one memory measurement
        print(json.dumps(peak_memory(args)))
        return
    mem = {}
    for mode in ("plain", "paraknow"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--model", args.model, "--data", args.data,
                              "--samples", str(args.memory_samples), "--max-length", str(args.max_length),
                              "--device", args.device, "--dtype", args.dtype, "--accumulate-dtype",
                              args.accumulate_dtype, "--accumulate-device", args.accumulate_device],
                             capture_output=True, text=True, check=True)
        mem[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"memory run {mode}: {mem[mode]}", file=sys.stderr, flush=True)
    timing = time_alternating(args)
    size = mem["plain"]["model_fp32_bytes"]
    print(f"model {args.model}  device {timing['device']}  samples {timing['samples']}  tokens {timing['tokens']}")
    print(f"  model float32 size                      {size / 2**20:9.1f} MiB")
    print(f"  time   plain forward+backward           {timing['plain_s']:9.2f} s")
    print(f"  time   paraknow taylor-abs              {timing['paraknow_s']:9.2f} s   "
          f"ratio {timing['paraknow_s'] / timing['plain_s']:.3f}  (target <= 1.15)")
    for mode in ("plain", "paraknow"):
        peak = mem[mode]["peak_bytes"]
        print(f"  memory {mode:<8} peak above start        {peak / 2**20:9.1f} MiB   = {peak / size:.2f} x model fp32")
    # plain = weights + grads (2x the weights at --dtype) + activations, so activations = plain peak - 2x;
    # paraknow must stay within the target + the same activations (weights + sums + gradients in flight):
    # float32 weights and sums 2.3x, bfloat16 weights with float32 sums 1.6x the float32 model.
    weights = mem["plain"]["weight_bytes"]
    activations = mem["plain"]["peak_bytes"] - 2 * weights
    ours = (mem["paraknow"]["peak_bytes"] - activations) / size
    target = 2.3 if weights == size else 1.6
    print(f"  weights {args.dtype}, sums {args.accumulate_dtype} on {args.accumulate_device}")
    print(f"  activations and allocator slack (plain peak - 2x weights) {activations / 2**20:9.1f} MiB")
    print(f"  paraknow peak less those activations                    {ours:9.2f} x model fp32  (target <= ~{target})")
    if args.out:

        write_figures(args.out, {"model": args.model, "data": args.data, "dtype": args.dtype,
                                 "accumulate_dtype": args.accumulate_dtype, "accumulate_device": args.accumulate_device,
                                 "memory": mem, "timing": timing, "time_ratio": timing["paraknow_s"] / timing["plain_s"],
                                 "activations_bytes": activations, "peak_less_activations_over_fp32_model": ours,
                                 "target": target, "smoke": args.smoke})

if __name__ == "__main__":
    main()
