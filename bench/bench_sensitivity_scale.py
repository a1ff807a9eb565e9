"""The sensitivity pass of the largest paper-scale model that fits one device, against its estimate.

For each preset, largest first, the memory estimate made before loading
(`estimate_sensitivity_memory`) is compared with the device's free memory; the first that fits is
built with random weights directly on the device (Llama shapes, the demo tokenizer: the cost does
not depend on what the weights are), then one plain forward+backward pass and `compute_sensitivity`
run over the same seed samples, alternating for --rounds. Reported: the times and their ratio, the
peak device memory of the pass against the estimate and against the float32 model size.

    python bench/bench_sensitivity_scale.py [--device cuda] [--dtype bfloat16] [--presets llama2-13b,llama2-7b]
        [--samples 32] [--max-length 512] [--rounds 2] [--smoke] [--out docs/results/sensitivity_scale.json]
"""
from __future__ import annotations

import statistics
import time

import torch
from bench_sensitivity import plain_pass, sync
from common import add_threads_option, set_threads, write_figures

from paraknow.core.models import quiet_transformers

PRESETS = {  # (layers, hidden, ffn, heads, kv heads, vocab)
    "llama2-70b": (80, 8192, 28672, 64, 8, 32000),
    "llama2-13b": (40, 5120, 13824, 40, 40, 32000),
    "llama2-7b": (32, 4096, 11008, 32, 32, 32000),
    "tiny": (2, 64, 172, 4, 4, 32000),
}


def llama_config(preset: str, dtype):
    from transformers import LlamaConfig

    layers, hidden, ffn, heads, kv_heads, vocab = PRESETS[preset]
    return LlamaConfig(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=ffn, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, vocab_size=vocab, tie_word_embeddings=False, dtype=dtype)


def peak_bytes(device: str) -> int | None:
    return torch.cuda.max_memory_allocated() if device.startswith("cuda") else None


def build_random(preset: str, dtype: torch.dtype, device: str):
    """A Llama of `preset` with random weights, built on `device` directly in `dtype` (no float32 copy on
    the way; the cost of a pass does not depend on what the weights are)."""
    from transformers import LlamaForCausalLM

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return LlamaForCausalLM(llama_config(preset, dtype))
    finally:
        torch.set_default_dtype(default)


def run_preset(preset, args, estimate) -> dict:
    from paraknow.core.data import encode_all, load_records
    from paraknow.core.models import load_model
    from paraknow.transfer.sensitivity import SensitivityConfig, compute_sensitivity

    _, tok = load_model("demo:teacher")
    t0 = time.perf_counter()
    model = build_random(preset, getattr(torch, args.dtype), args.device)
    sync(args.device)
    build_s = time.perf_counter() - t0
    records = load_records(args.data)[:args.samples]
    items = encode_all(tok, records, args.max_length)
    config = SensitivityConfig(samples=args.samples, max_length=args.max_length)
    plain, ours, peaks = [], [], {}
    for round_ in range(args.rounds):
        for name, fn, times in (("plain", lambda: plain_pass(model, tok, records, args.max_length, args.device),
                                 plain),
                                ("paraknow", lambda: compute_sensitivity(model, tok, records, config), ours)):
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            sync(args.device)
            t0 = time.perf_counter()
            out = fn()
            sync(args.device)
            times.append(time.perf_counter() - t0)
            peaks[name] = peak_bytes(args.device)
            del out
        print(f"  round {round_ + 1}: plain {plain[-1]:.2f} s, paraknow {ours[-1]:.2f} s", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    return {"preset": preset, "params": n_params, "dtype": args.dtype, "build_s": build_s,
            "tokens": sum(len(i.input_ids) for i in items), "plain_s": statistics.median(plain),
            "paraknow_s": statistics.median(ours), "ratio": statistics.median(ours) / statistics.median(plain),
            "peak_bytes": peaks, "estimate_device_bytes": estimate.device_bytes(),
            "peak_over_estimate": peaks["paraknow"] / estimate.device_bytes() if peaks["paraknow"] else None,
            "peak_over_fp32_model": peaks["paraknow"] / (4 * n_params) if peaks["paraknow"] else None}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--presets", default="llama2-70b,llama2-13b,llama2-7b", help=f"largest first, of {', '.join(PRESETS)}")
    ap.add_argument("--data", default="task:arith:seed")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="the tiny preset on the CPU (for the tests)")
    ap.add_argument("--out", default=None)
    add_threads_option(ap)
    args = ap.parse_args()
    set_threads(args.threads)
    if args.smoke:
        args.device, args.presets, args.samples, args.rounds, args.max_length = "cpu", "tiny", 2, 1, 64
    quiet_transformers()
    from paraknow.core.memory import available_memory_bytes, estimate_sensitivity_memory

    on_gpu = args.device.startswith("cuda")
    free, free_host = available_memory_bytes(args.device), available_memory_bytes("cpu")
    tried, result = [], None
    for preset in [p.strip() for p in args.presets.split(",")]:
        estimate = estimate_sensitivity_memory(llama_config(preset, args.dtype), args.dtype, max_length=args.max_length)
        need, need_host = (estimate.device_bytes(), estimate.host_bytes()) if on_gpu else (estimate.total_bytes(), 0)
        fits = (free is None or need <= free) and (free_host is None or need_host <= free_host)
        tried.append({"preset": preset, "estimate_device_bytes": need, "estimate_host_bytes": need_host, "fits": fits})
        print(f"{preset}: needs {need / 2**30:.1f} GiB on {args.device} (free {(free or 0) / 2**30:.1f}) and "
              f"{need_host / 2**30:.1f} GiB on the host (free {(free_host or 0) / 2**30:.1f}) -> "
              f"{'runs' if fits else 'does not fit'}", flush=True)
        if fits:
            result = run_preset(preset, args, estimate)
            break
    if result:
        peak = result["peak_bytes"]["paraknow"]
        print(f"{result['preset']} ({result['params'] / 1e9:.2f} B params, {args.dtype}) on {args.device}: "
              f"plain {result['plain_s']:.2f} s, paraknow {result['paraknow_s']:.2f} s, ratio {result['ratio']:.3f}"
              + (f"; peak {peak / 2**30:.1f} GiB = {result['peak_over_estimate']:.2f}x the estimate, "
                 f"{result['peak_over_fp32_model']:.2f}x the float32 model" if peak else ""))
    if args.out:
        write_figures(args.out, {"device": args.device, "device_name": torch.cuda.get_device_name()
                                 if args.device.startswith("cuda") else "cpu", "free_bytes": free, "free_host_bytes": free_host, "tried": tried,
                                 "result": result, "samples": args.samples, "max_length": args.max_length,
                                 "smoke": args.smoke})


if __name__ == "__main__":
    main()
