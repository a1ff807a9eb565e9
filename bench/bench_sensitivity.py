"""Sensitivity pass vs plain forward+backward over the same seeds (SPEC section 8).

Time: the two are interleaved sample by sample in one process (same machine load for both),
so the ratio is robust on a busy machine. Memory: each runs in a fresh subprocess and reports
its peak (CPU: peak RSS above the RSS before loading the model; CUDA: max_memory_allocated),
as a ratio to the model's float32 size.

    python bench/bench_sensitivity.py --model bundled:smollm2-135m-instruct \
        --data ../shared/data/gsm/seed_32.jsonl --samples 32
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from paraknow.data import collate, encode_all, load_records  # noqa: E402
from paraknow.models import load_model  # noqa: E402
from paraknow.sensitivity import SensitivityConfig, compute_sensitivity, taylor_abs  # noqa: E402


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(args) -> dict:
    model, tok = load_model(args.model, device=args.device)
    device = str(model.get_input_embeddings().weight.device)
    items = encode_all(tok, load_records(args.data)[: args.samples], args.max_length)
    plain_s = ours_s = 0.0
    for item in items:
        batch = {k: v.to(device) for k, v in collate([item], 0).items()}
        _sync(device)
        t0 = time.perf_counter()
        model(**batch).loss.backward()  # plain: autograd writes .grad
        _sync(device)
        plain_s += time.perf_counter() - t0
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        taylor_abs(model, [item])  # paraknow: same pass, gradients folded into |theta*grad| on arrival
        _sync(device)
        ours_s += time.perf_counter() - t0
    tokens = sum(len(i.input_ids) for i in items)
    return {"plain_s": plain_s, "paraknow_s": ours_s, "samples": len(items), "tokens": tokens,
            "device": device}


def peak_memory(args) -> dict:
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    before_kb = _rss_kb()
    model, tok = load_model(args.model, device=args.device)
    model_bytes = sum(p.numel() for p in model.parameters()) * 4
    records = load_records(args.data)[: args.samples]
    if args.mode == "plain":
        device = str(model.get_input_embeddings().weight.device)
        for item in encode_all(tok, records, args.max_length):
            model(**{k: v.to(device) for k, v in collate([item], 0).items()}).loss.backward()
    else:
        compute_sensitivity(model, tok, records, SensitivityConfig(samples=args.samples, max_length=args.max_length))
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb) * 1024
    return {"peak_bytes": peak, "model_fp32_bytes": model_bytes}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="demo:teacher")
    parser.add_argument("--data", default="task:arith:seed")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", choices=["plain", "paraknow"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.mode:  # child process: one memory measurement
        print(json.dumps(peak_memory(args)))
        return
    mem = {}
    for mode in ("plain", "paraknow"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--model", args.model, "--data", args.data,
                              "--samples", str(args.samples), "--max-length", str(args.max_length),
                              "--device", args.device], capture_output=True, text=True, check=True)
        mem[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    timing = time_interleaved(args)
    size = mem["plain"]["model_fp32_bytes"]
    print(f"model {args.model}  device {timing['device']}  samples {timing['samples']}  tokens {timing['tokens']}")
    print(f"  model float32 size                      {size / 2**20:9.1f} MiB")
    print(f"  time   plain forward+backward           {timing['plain_s']:9.2f} s")
    print(f"  time   paraknow taylor-abs              {timing['paraknow_s']:9.2f} s   "
          f"ratio {timing['paraknow_s'] / timing['plain_s']:.3f}  (target <= 1.15)")
    for mode in ("plain", "paraknow"):
        peak = mem[mode]["peak_bytes"]
        print(f"  memory {mode:<8} peak above start        {peak / 2**20:9.1f} MiB   "
              f"= {peak / size:.2f} x model fp32" + ("  (target <= ~2.3 + activations)" if mode == "paraknow" else ""))


if __name__ == "__main__":
    main()
