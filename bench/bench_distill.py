"""Logit KD's cost: `paraknow train --distill logits` vs vanilla `paraknow train` vs a plain PyTorch loop
doing the same work per micro-batch (a teacher forward without gradients, a student forward, the KD loss,
one backward; AdamW with the same linear schedule). Target: logit KD within 1.15x of the plain loop.

    python bench/bench_distill.py                          # demo:teacher -> demo:student, task:facts:train
    python bench/bench_distill.py --samples 256 --out docs/results/distill.json

Same student, LoRA, data order-independent batches of the same sizes, epochs and threads on every side;
times are the training loops' wall and CPU seconds (paraknow: status.json's train_runtime and train_cpu_s;
the loop: its loop). Rounds alternate the three sides; the best round of each is compared; on a loaded
shared CPU the process CPU time is the steadier figure.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from common import in_scratch, scale_parser, write_figures


def plain_loop(a, items, pad_id) -> tuple[float, float]:
    """The floor: the two forwards, the loss written out, one backward, AdamW; (wall, CPU) seconds of the loop."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    from paraknow.core.data import collate
    from paraknow.core.models import load_model

    teacher = load_model(a.teacher)[0].eval().requires_grad_(False)
    student = load_model(a.student)[0]
    transformers.set_seed(0)
    student = get_peft_model(student, LoraConfig(r=a.rank, lora_alpha=a.rank, lora_dropout=0.05, task_type="CAUSAL_LM",
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                 "up_proj", "down_proj"])).train()
    params = [p for p in student.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.0)
    accum = a.batch // a.micro_batch
    steps = len(items) // a.batch
    schedule = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: max(0.0, 1 - s / max(1, steps)))
    lam, tau = a.weight, a.temperature
    start, cpu = time.perf_counter(), time.process_time()
    for step in range(steps):
        batches = [collate(items[i:i + a.micro_batch], pad_id)
                   for i in range(step * a.batch, (step + 1) * a.batch, a.micro_batch)]
        n = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
        for b in batches:
            with torch.no_grad():
                t = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]  # [b, s-1, V]
            s = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]  # [b, s-1, V]
            keep = b["labels"][:, 1:] != -100  # [b, s-1]
            s, t = s[keep].float(), t[keep].float()  # [n, V]
            ce = torch.nn.functional.cross_entropy(s, b["labels"][:, 1:][keep], reduction="sum")
            kl = (torch.softmax(t / tau, -1) * (torch.log_softmax(t / tau, -1) - torch.log_softmax(s / tau, -1))).sum()
            ((1 - lam) * ce / n + lam * tau ** 2 * kl / n).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        schedule.step()
        optim.zero_grad(set_to_none=True)
    return time.perf_counter() - start, time.process_time() - cpu


def paraknow_run(a, data_path: Path, out: Path, distill: bool) -> tuple[float, float]:
    import json

    from paraknow.runs.train import run_training
    from paraknow.runs.train_config import TrainConfig

    kd = dict(distill="logits", distill_teacher=a.teacher, distill_weight=a.weight, temperature=a.temperature)
    config = TrainConfig(student=a.student, data=str(data_path), out=str(out), epochs=1, batch=a.batch,
                         micro_batch=a.micro_batch, rank=a.rank, alpha=a.rank, warmup=0.0, device="cpu",
                         **(kd if distill else {}))
    with open(os.devnull, "w") as devnull:
        stdout, sys.stdout = sys.stdout, devnull
        try:
            code = run_training(config)
        finally:
            sys.stdout = stdout
    if code != 0:
        raise SystemExit(f"run_training exited {code}")
    status = json.loads((out / "status.json").read_text())
    return status["train_runtime"], status["train_cpu_s"]


def main() -> None:
    ap = scale_parser("8 samples, one round (seconds; for the tests)")
    ap.add_argument("--teacher", default="demo:teacher")
    ap.add_argument("--student", default="demo:student")
    ap.add_argument("--data", default="task:facts:train")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--weight", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if a.smoke:
        a.samples, a.batch, a.micro_batch, a.rounds = 8, 4, 2, 1
    import torch

    torch.set_num_threads(a.threads or 1)
    from paraknow.core.models import quiet_transformers

    quiet_transformers()
    in_scratch("bench_distill_", run_bench, a)


def run_bench(a, work: Path) -> None:
    import torch

    from paraknow.core.data import encode_all, load_records
    from paraknow.core.models import load_model
    from paraknow.core.records import to_jsonl

    records = load_records(a.data)[: a.samples]
    data_path = work / "data.jsonl"
    data_path.write_text(to_jsonl(records))
    tokenizer = load_model(a.student)[1]
    items = encode_all(tokenizer, records)
    load = os.getloadavg()
    print(f"{a.teacher} -> {a.student}; {len(items)} samples ({sum(len(x.input_ids) for x in items)} tokens), batch "
          f"{a.batch} = {a.micro_batch} x {a.batch // a.micro_batch}; LoRA r {a.rank}; λ {a.weight}, τ {a.temperature}; "
          f"torch threads {torch.get_num_threads()} of {os.cpu_count()} cpus; load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}; {a.rounds} alternating rounds", flush=True)
    sides = {"plain loop (teacher fwd + student fwd + bwd)": lambda r: plain_loop(a, items, tokenizer.pad_token_id),
             "paraknow logit KD": lambda r: paraknow_run(a, data_path, work / f"kd{r}", True),
             "paraknow vanilla": lambda r: paraknow_run(a, data_path, work / f"vanilla{r}", False)}
    times = {name: [] for name in sides}  # (wall, CPU) seconds per round
    for r in range(a.rounds):
        for name, run in sides.items():
            times[name].append(run(r))
            wall, cpu = times[name][-1]
            print(f"  round {r + 1} {name:46s} {wall:7.2f} s  (CPU {cpu:7.2f} s)", flush=True)
    best = {name: min(w for w, _ in v) for name, v in times.items()}
    best_cpu = {name: min(c for _, c in v) for name, v in times.items()}
    loop, kd, vanilla = best.values()
    cpu_loop, cpu_kd, cpu_vanilla = best_cpu.values()
    print(f"logit KD / plain loop = {kd / loop:.3f} wall, {cpu_kd / cpu_loop:.3f} CPU time  "
          f"(target <= 1.15: {'PASS' if kd / loop <= 1.15 else 'FAIL'})")
    print(f"logit KD / vanilla training = {kd / vanilla:.3f} wall, {cpu_kd / cpu_vanilla:.3f} CPU time  "
          "(the teacher's forward on top of the student's step)")
    if a.out:
        write_figures(a.out, {"seconds": best, "cpu_seconds": best_cpu, "kd_over_loop": round(kd / loop, 3),
                              "kd_over_vanilla": round(kd / vanilla, 3), "kd_over_loop_cpu": round(cpu_kd / cpu_loop, 3),
                              "kd_over_vanilla_cpu": round(cpu_kd / cpu_vanilla, 3), "samples": len(items), "batch": a.batch,
                              "micro_batch": a.micro_batch, "threads": torch.get_num_threads(),
                              "load_average_start": [round(x, 2) for x in load], "rounds": a.rounds})


if __name__ == "__main__":
    main()
