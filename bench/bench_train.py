"""Fine-tuning throughput: `paraknow.runs.train.run_training` vs a plain transformers.Trainer + PEFT script.

Same model, data, tokenisation, LoRA settings and batch layout on both sides; the plain script
logs nothing per step and saves only its adapter, so every overhead of paraknow's run
(metrics.jsonl, status.json, STOP checks, adapter conversion) counts against it. Target:
paraknow's training throughput within 5% of the plain Trainer (ratio >= 0.95).

    python bench/bench_train.py                       # tiny random Llama, task:arith:train
    python bench/bench_train.py --model demo:student --samples 256
    python bench/bench_train.py --out docs/results/bench_train.json

Rounds alternate plain / paraknow and the best round of each is compared (noisy shared CPUs): wall
seconds of the training loop (the target) and its process CPU seconds (steadier when the machine is
shared), printed with the torch thread count and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import string
import sys
import time
from pathlib import Path

from common import add_threads_option, in_scratch, set_threads, write_figures


def char_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
    chars = sorted(set(string.printable) - set(string.whitespace) | {" ", "\n"})
    core = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(specials + chars)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>")
    tok.add_special_tokens({"additional_special_tokens": specials[4:]})
    return tok


def build_tiny_model(directory: Path, hidden: int, layers: int) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 8 * 8, num_hidden_layers=layers,
                         num_attention_heads=max(1, hidden // 32), num_key_value_heads=max(1, hidden // 64),
                         vocab_size=len(tok), max_position_embeddings=1024, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


def plain_trainer(model_ref: str, records, a, out_dir: Path) -> dict:
    """The baseline: what a user would write with transformers + PEFT directly."""
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from paraknow.core.data import collate, encode_all
    from paraknow.core.models import load_model

    t_start = time.time()
    model, tokenizer = load_model(model_ref)
    transformers.set_seed(a.seed)
    model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=0.05, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"]))
    items = encode_all(tokenizer, records, a.max_length)
    args = TrainingArguments(output_dir=str(out_dir), num_train_epochs=a.epochs, learning_rate=3e-4,
                             per_device_train_batch_size=a.micro_batch,
                             gradient_accumulation_steps=a.batch // a.micro_batch, warmup_steps=0.03,
                             seed=a.seed, data_seed=a.seed, save_strategy="no", report_to="none", disable_tqdm=True,
                             remove_unused_columns=False, label_names=["labels"], use_cpu=True)
    pad = tokenizer.pad_token_id
    trainer = Trainer(model=model, args=args, train_dataset=items, data_collator=lambda b: collate(b, pad))
    t0, cpu0 = time.time(), time.process_time()
    trainer.train()
    train_s, cpu_s = time.time() - t0, time.process_time() - cpu0
    model.save_pretrained(str(out_dir / "adapter"))
    return {"train_s": train_s, "cpu_s": cpu_s, "total_s": time.time() - t_start, "steps": trainer.state.global_step}


def paraknow_run(model_ref: str, data_path: str, a, out_dir: Path) -> dict:
    from paraknow.runs.train import run_training
    from paraknow.runs.train_config import TrainConfig

    config = TrainConfig(student=model_ref, data=data_path, out=str(out_dir), init="vanilla", epochs=a.epochs,
                         batch=a.batch, micro_batch=a.micro_batch, rank=a.rank, alpha=a.alpha,
                         max_length=a.max_length, seed=a.seed, device="cpu")
    t_start = time.time()
    with open(os.devnull, "w") as devnull:  # the per-step lines go to stdout.log in the app
        stdout, sys.stdout = sys.stdout, devnull
        try:
            code = run_training(config)
        finally:
            sys.stdout = stdout
    total = time.time() - t_start
    if code != 0:
        raise SystemExit(f"run_training exited {code}")
    status = json.loads((out_dir / "status.json").read_text())
    return {"train_s": status["train_runtime"], "cpu_s": status["train_cpu_s"], "total_s": total,
            "steps": status["step"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model reference (default: a tiny random Llama)")
    parser.add_argument("--hidden", type=int, default=128, help="tiny model width")
    parser.add_argument("--layers", type=int, default=4, help="tiny model depth")
    parser.add_argument("--data", default="task:arith:train")
    parser.add_argument("--samples", type=int, default=160)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    add_threads_option(parser, default=1)  # both sides; 1 is the most stable on a shared CPU
    parser.add_argument("--smoke", action="store_true", help="a 1-layer model, 8 samples, one round (seconds; for the tests)")
    parser.add_argument("--out", default=None, help="also write the figures (with provenance) as JSON here")
    a = parser.parse_args()
    if a.smoke:
        a.model, a.hidden, a.layers, a.samples, a.batch, a.micro_batch, a.rank, a.alpha, a.rounds = \
            None, 64, 1, 8, 4, 2, 4, 4, 1
    set_threads(a.threads)

    import transformers

    transformers.utils.logging.set_verbosity_error()
    in_scratch("bench_train_", run_bench, a)


def run_bench(a, work: Path) -> None:
    import torch

    from paraknow.core.data import encode_all, load_records
    from paraknow.core.records import to_jsonl

    model_ref = a.model or build_tiny_model(work / "model", a.hidden, a.layers)
    records = load_records(a.data)[: a.samples]
    data_path = work / "data.jsonl"
    data_path.write_text(to_jsonl(records))
    from paraknow.core.models import load_model

    model, tokenizer = load_model(model_ref)
    n_params = sum(p.numel() for p in model.parameters())
    n_tokens = sum(len(x.input_ids) for x in encode_all(tokenizer, records, a.max_length))
    del model
    samples = len(records) * a.epochs
    print(f"model {a.model or f'tiny llama ({a.hidden}x{a.layers})'} {n_params / 1e6:.1f}M params; "
          f"{len(records)} samples ({n_tokens} tokens) x {a.epochs} epochs; batch {a.batch} = "
          f"{a.micro_batch} x {a.batch // a.micro_batch}; LoRA r {a.rank}; torch threads {torch.get_num_threads()} "
          f"of {os.cpu_count()} cpus; {a.rounds} alternating rounds")
    results = {"plain": [], "paraknow": []}
    for r in range(a.rounds):
        for name in ("plain", "paraknow"):
            out = work / f"{name}{r}"
            if name == "plain":
                res = plain_trainer(model_ref, records, a, out)
            else:
                res = paraknow_run(model_ref, str(data_path), a, out)
            results[name].append(res)
            print(f"  round {r + 1} {name:9s} train {res['train_s']:7.2f}s ({samples / res['train_s']:6.2f} samples/s, "
                  f"{n_tokens * a.epochs / res['train_s']:8.1f} tokens/s)  cpu {res['cpu_s']:7.2f}s  end-to-end {res['total_s']:6.2f}s "
                  f"steps {res['steps']}", flush=True)
    best = {k: min(v, key=lambda x: x["train_s"]) for k, v in results.items()}
    plain_tp = samples / best["plain"]["train_s"]
    ours_tp = samples / best["paraknow"]["train_s"]
    ratio = ours_tp / plain_tp
    print(f"best plain Trainer+PEFT : {plain_tp:7.2f} samples/s  {n_tokens * a.epochs / best['plain']['train_s']:8.1f} tokens/s")
    print(f"best paraknow run       : {ours_tp:7.2f} samples/s  {n_tokens * a.epochs / best['paraknow']['train_s']:8.1f} tokens/s")
    print(f"throughput ratio paraknow/plain = {ratio:.3f}  (target >= 0.95: {'PASS' if ratio >= 0.95 else 'FAIL'})")
    cpu_ratio = min(x["cpu_s"] for x in results["plain"]) / min(x["cpu_s"] for x in results["paraknow"])
    print(f"CPU-time throughput ratio paraknow/plain = {cpu_ratio:.3f} (process CPU seconds in the training loop)")
    e2e = min(x["total_s"] for x in results["paraknow"]) / min(x["total_s"] for x in results["plain"])
    print(f"end-to-end time ratio paraknow/plain = {e2e:.3f} (includes loading, files, adapter save)")
    if a.out:
        from paraknow.core.threads import load_average

        write_figures(a.out, {"model": a.model or f"tiny llama ({a.hidden}x{a.layers})", "samples": len(records),
                              "batch": a.batch, "micro_batch": a.micro_batch, "threads": torch.get_num_threads(),
                              "load_average_after": load_average(), "rounds": results,
                              "throughput_ratio": round(ratio, 3), "cpu_throughput_ratio": round(cpu_ratio, 3),
                              "end_to_end_ratio": round(e2e, 3), "target": "throughput_ratio >= 0.95"})


if __name__ == "__main__":
    main()
