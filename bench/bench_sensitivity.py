"""Sensitivity pass vs plain forward+backward over the same seeds (SPEC section 8).

Time: the two are interleaved sample by sample in one process (same machine load for both),
so the ratio is robust on a busy machine. Memory: each runs in a fresh subprocess and reports
its peak (CPU: peak RSS during the pass above the RSS before loading the model; CUDA: max_memory_allocated),
as a ratio to the model's float32 size.

    python bench/bench_sensitivity.py --model bundled:smollm2-135m-instruct \
        --data ../shared/data/gsm/seed_32.jsonl --samples 32 [--dtype bfloat16] \
        [--accumulate-dtype float32|bfloat16] [--accumulate-device same|cpu]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from paraknow.data import collate, encode_all, load_records  # noqa: E402
from paraknow.models import load_model  # noqa: E402
from paraknow.sensitivity import (SensitivityConfig, _accumulators, _params, _per_sample_backward,  # noqa: E402
                                  abs_grad_folder, compute_sensitivity)


def _proc_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field))


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as fh:  # "5" resets VmHWM (peak RSS) to the current RSS
        fh.write("5")


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(args) -> dict:
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    device = str(model.get_input_embeddings().weight.device)
    items = encode_all(tok, load_records(args.data)[: args.samples], args.max_length)
    plain_s = ours_s = 0.0
    acc = _accumulators(model)  # allocated once, as in compute_sensitivity's taylor-abs
    fold = abs_grad_folder(acc)
    for item in items:
        batch = {k: v.to(device) for k, v in collate([item], 0).items()}
        _sync(device)
        t0 = time.perf_counter()
        model(**batch).loss.backward()  # plain: autograd writes .grad
        _sync(device)
        plain_s += time.perf_counter() - t0
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        _per_sample_backward(model, [item], fold)  # paraknow: same pass, each gradient folded on arrival
        _sync(device)
        ours_s += time.perf_counter() - t0
        print(f"timed sample: plain {plain_s:.1f} s, paraknow {ours_s:.1f} s", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    for name, p in _params(model).items():  # the final |theta| multiply, once per pass
        acc[name].mul_(p.detach().float().abs())
    ours_s += time.perf_counter() - t0
    tokens = sum(len(i.input_ids) for i in items)
    return {"plain_s": plain_s, "paraknow_s": ours_s, "samples": len(items), "tokens": tokens,
            "device": device}


def peak_memory(args) -> dict:
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    before_kb = _proc_kb("VmRSS")
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    _reset_peak_rss()  # loading's own transient copies are not the pass's peak
    model_bytes = sum(p.numel() for p in model.parameters()) * 4
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    records = load_records(args.data)[: args.samples]
    if args.mode == "plain":
        device = str(model.get_input_embeddings().weight.device)
        for item in encode_all(tok, records, args.max_length):
            model(**{k: v.to(device) for k, v in collate([item], 0).items()}).loss.backward()
    else:
        compute_sensitivity(model, tok, records, SensitivityConfig(
            samples=args.samples, max_length=args.max_length, accumulate_dtype=args.accumulate_dtype,
            accumulate_device=args.accumulate_device))
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
                              "--samples", str(args.memory_samples), "--max-length", str(args.max_length),
                              "--device", args.device, "--dtype", args.dtype, "--accumulate-dtype",
                              args.accumulate_dtype, "--accumulate-device", args.accumulate_device],
                             capture_output=True, text=True, check=True)
        mem[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"memory run {mode}: {mem[mode]}", file=sys.stderr, flush=True)
    timing = time_interleaved(args)
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


if __name__ == "__main__":
    main()
