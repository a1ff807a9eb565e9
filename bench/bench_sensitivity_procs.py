"""Multi-process sensitivity: the same pass with 1 process and with N (torchrun, gloo on CPUs).

Every process gets the same --threads torch threads, the share of the machine one process would
own (as one GPU per process would be), so N processes use N times the cores of one. The 1- and
N-process runs alternate round by round (same machine load for both) and their median pass times
are compared; the pass is `compute_sensitivity` itself, timed on rank 0 between two barriers
(tokenisation, the accumulation and the all-reduce at the end included; process start and model
loading not). The N-process map is also compared with the 1-process one (max relative difference).

    python bench/bench_sensitivity_procs.py [--model demo:teacher | --shape smollm2-135m] [--procs 2]
        [--threads 1] [--samples 32] [--rounds 3] [--smoke] [--out docs/results/sensitivity_procs.json]

--shape builds a randomly initialised Llama of that shape (with the demo tokenizer) in a temporary
folder, for machines without the real model. Target: time with 2 processes <= 0.6x the time with 1
on a machine with free cores (the cores are reported; on a shared 2-core machine it cannot hold).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import set_threads, write_figures

from paraknow.core.models import quiet_transformers

SHAPES = {  # (layers, hidden, ffn, heads, kv heads, vocab): SmolLM2-135M's own shapes
    "smollm2-135m": (30, 576, 1536, 9, 3, 49152),
    "tiny": (2, 64, 128, 4, 2, 49152),
}


def build_random_model(shape: str, folder: Path) -> str:
    """A random Llama of `shape` with the demo tokenizer, saved as safetensors under `folder`."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from paraknow.core.models import resolve_ref

    layers, hidden, ffn, heads, kv_heads, vocab = SHAPES[shape]
    config = LlamaConfig(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=ffn, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, vocab_size=vocab, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_ref("demo:teacher")).save_pretrained(folder)
    return str(folder)


def worker(args) -> None:
    """One process of a torchrun launch: time the pass on rank 0, save the map on request."""
    from safetensors.torch import save_file

    from paraknow.core import parallel
    from paraknow.core.data import load_records
    from paraknow.core.models import load_model
    from paraknow.transfer.sensitivity import SensitivityConfig, compute_sensitivity

    set_threads(args.threads)
    model, tok = load_model(args.model)
    records = load_records(args.data)
    config = SensitivityConfig(samples=args.samples, max_length=args.max_length)
    with parallel.process_group("cpu"):
        rank, size = parallel.rank_and_size()
        if size > 1:
            torch.distributed.barrier()
        t0 = time.perf_counter()
        scores = compute_sensitivity(model, tok, records, config)
        if size > 1:
            torch.distributed.barrier()
        seconds = time.perf_counter() - t0
        if rank == 0:
            Path(args.result).write_text(json.dumps({"seconds": seconds, "world_size": size}))
            if args.save:
                save_file({k: v.contiguous() for k, v in scores.items()}, args.save)


def launch(args, procs: int, result: Path, save: Path | None) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", __file__,
           "--worker", "--model", args.model, "--data", args.data, "--samples", str(args.samples),
           "--max-length", str(args.max_length), "--threads", str(args.threads), "--result", str(result)]
    if save:
        cmd += ["--save", str(save)]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(result.read_text())["seconds"]


def max_relative_difference(path_a: Path, path_b: Path) -> float:
    from safetensors.torch import load_file

    a, b = load_file(str(path_a)), load_file(str(path_b))
    worst = 0.0
    for name, x in a.items():
        scale = float(x.abs().max())
        if scale > 0:
            worst = max(worst, float((x - b[name]).abs().max()) / scale)
    return worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo:teacher")
    ap.add_argument("--shape", choices=list(SHAPES), help="a random Llama of this shape instead of --model")
    ap.add_argument("--data", default="task:arith:seed")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="the tiny shape, 4 samples, one round (for the tests)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    quiet_transformers()
    if args.worker:
        worker(args)
        return
    if args.smoke:
        args.shape, args.samples, args.rounds, args.max_length = "tiny", 4, 1, 64
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.shape:
            args.model = build_random_model(args.shape, tmp / "model")
        times = {1: [], args.procs: []}
        for round_ in range(args.rounds):
            for procs in times:
                save = tmp / f"map-{procs}.safetensors" if round_ == 0 else None
                times[procs].append(launch(args, procs, tmp / "result.json", save))
            print(f"round {round_ + 1}: " + ", ".join(f"{p} proc {t[-1]:.2f} s" for p, t in times.items()),
                  file=sys.stderr, flush=True)
        difference = max_relative_difference(tmp / "map-1.safetensors", tmp / f"map-{args.procs}.safetensors")
    one, many = statistics.median(times[1]), statistics.median(times[args.procs])
    cores = os.cpu_count()
    print(f"model {args.shape or args.model}, {args.samples} samples, {args.threads} thread(s) per process, "
          f"{cores} cores, load average {os.getloadavg()[0]:.2f}")
    print(f"  1 process  {one:8.2f} s")
    print(f"  {args.procs} processes {many:8.2f} s   ratio {many / one:.3f}  (target <= 0.6 for 2 on free cores)")
    print(f"  max relative difference of the maps {difference:.2e}  (the test asks <= 1e-5)")
    if args.out:

        write_figures(args.out, {"model": args.shape or args.model, "samples": args.samples,
                                 "max_length": args.max_length, "threads_per_process": args.threads,
                                 "cpu_count": cores, "procs": args.procs, "seconds": {str(k): v for k, v in times.items()},
                                 "median_s": {"1": one, str(args.procs): many}, "ratio": many / one,
                                 "max_relative_difference": difference, "smoke": args.smoke})


if __name__ == "__main__":
    main()
