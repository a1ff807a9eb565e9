"""A study cell against a plain PyTorch + PEFT loop doing the same work (issue 24).

    python bench/bench_cell.py --out docs/results/bench_cell.json   # the cell at 8 x 4 accumulation (default)
    python bench/bench_cell.py --micro-batch 32  # one pass per step, as the plain loop
    python bench/bench_cell.py --smoke          # seconds; what the test suite runs

Both sides, for a vanilla and a PKT cell of the demo pair on JSONL subsets of task:instruct: load the
student, put the LoRA on it (vanilla: PEFT's init; PKT: the same export, its residual/ companion merged
first), train with AdamW, linear warm-up and decay, LoRA dropout 0.05, gradient clipping at 1 and
the same steps and batch, then evaluate validation and test records (loss and greedy answers).

- cell:  `paraknow.study.runner.run_cell` into a study directory (run directory, metrics.jsonl,
         status, adapter conversion, cell.json: everything a study writes);
- plain: the loop a careful user writes: one forward+backward of the whole batch per step, the
         model's own loss, then the adapter merged into the weights and evaluated in batches of
         EVAL_BATCH (`generate` for the answers), the adapter saved.

The export is made once before the rounds (both sides start from it). Rounds alternate cell and
plain; CPU seconds (steadier on a shared machine) and wall seconds are printed per round, with the
torch thread count (one: the study's thread policy) and the load average. Target: the cell within
1.15x the plain loop (best round of each, CPU seconds). The study's own estimate of each cell
(paraknow.study.budget) is made before and after the rounds: the two within +-20 % of each other.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import time
from pathlib import Path

from common import study_bench, study_inputs

from paraknow.core.options import default_of
from paraknow.runs.train_config import TrainConfig

SIZES = {"full": {"train": 512, "val": 64, "test": 200, "seed": 32, "tokens": 64, "rounds": 3},
         "smoke": {"train": 8, "val": 2, "test": 2, "seed": 4, "tokens": 4, "rounds": 1}}
EVAL_BATCH = 64  # the plain loop's evaluation batch (merged weights)
DEFAULT_MICRO_BATCH = default_of(TrainConfig, "micro_batch")  # 8: the trainer's default
TRAIN = {"epochs": 1, "lr": 1e-2, "batch": 32, "rank": 16, "alpha": 16}  # as the shipped studies


def micro_batch_option(argv):
    """(--micro-batch of the cell, the other arguments): 8 (default) is the trainer's default and the
    shipped studies' 8 x 4 accumulation (the same rows per step, other dropout draws); 32 is one pass per
    step, as the plain loop."""
    import argparse

    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--micro-batch", type=int, default=DEFAULT_MICRO_BATCH)
    known, rest = ap.parse_known_args(argv)
    return known.micro_batch, rest


def make_recipe(root: Path, size: dict, micro_batch: int) -> dict:
    paths = study_inputs(root, "instruct", size)
    train = {**TRAIN, "micro_batch": micro_batch, "eval_limit": size["val"], "eval_max_new_tokens": size["tokens"],
             "device": "cpu"}
    if size["train"] < train["batch"]:
        train.update(batch=4, micro_batch=2)
    return {"teacher": "demo:teacher", "student": "demo:student", **paths, "train": train, "seeds": [0],
            "budget_minutes": 600, "arms": [{"name": "vanilla", "init": "vanilla"},
                                            {"name": "pkt", "init": "pkt", "extract": {"samples": size["seed"]}}]}


def clocked(fn):
    """(wall s, CPU s of this process, value)."""
    t0, c0 = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - t0, time.process_time() - c0, value


def plain_model(config):
    """The student with its LoRA, as plain PEFT builds it (`config`: the cell's resolved TrainConfig)."""
    import transformers
    from peft import LoraConfig, PeftModel, get_peft_model

    from paraknow.core.models import load_model

    model, tokenizer = load_model(config.student)
    transformers.set_seed(config.seed)
    if config.method == "vanilla":
        lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, task_type="CAUSAL_LM",
                          target_modules=list(config.target_modules))
        return get_peft_model(model, lora), tokenizer
    base = PeftModel.from_pretrained(model, str(Path(config.init) / "residual")).merge_and_unload()
    lora = LoraConfig.from_pretrained(config.init)
    lora.lora_dropout = config.dropout
    return PeftModel.from_pretrained(base, config.init, is_trainable=True, config=lora), tokenizer


def plain_train(model, items, pad: int, config) -> None:
    import torch
    from transformers import get_linear_schedule_with_warmup

    from paraknow.core.data import collate

    batch, epochs = config.batch, math.ceil(config.epochs)
    steps = math.ceil(len(items) / batch) * epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(optimiser, math.ceil(config.warmup * steps), steps)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(items), generator=generator).tolist()
        for start in range(0, len(order), batch):
            inputs = collate([items[i] for i in order[start:start + batch]], pad)
            model(**inputs).loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            schedule.step()
            optimiser.zero_grad(set_to_none=True)


def plain_evaluate(model, tokenizer, records, max_new_tokens: int) -> tuple[float, float]:
    """(accuracy, mean per-sample loss) on merged weights, batches of EVAL_BATCH sorted by length."""
    import torch

    from paraknow.core.data import collate, encode_all, encode_prompt, per_sample_loss
    from paraknow.core.tasks import score

    pad = tokenizer.pad_token_id
    items = encode_all(tokenizer, records, 2048)
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    losses, prompts = [], [encode_prompt(tokenizer, r) for r in records]
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(order), EVAL_BATCH):
            batch = collate([items[i] for i in order[start:start + EVAL_BATCH]], pad)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            losses += per_sample_loss(logits, batch["labels"]).tolist()
        by_length = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(by_length), EVAL_BATCH):
            idx = by_length[start:start + EVAL_BATCH]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in idx])
            out = model.generate(input_ids=ids, attention_mask=(ids != pad).long(), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
            for row, i in enumerate(idx):
                correct += score(records[i], tokenizer.decode(out[row, width:], skip_special_tokens=True))
    return correct / len(records), sum(losses) / len(losses)


def plain_cell(recipe, arm: str, init: str, out: Path) -> dict:
    from paraknow.core.data import encode_all, load_records
    from paraknow.study.plan import train_config

    config = train_config(recipe, recipe.arm(arm), 0, None, init).resolved(check_out=False)
    model, tokenizer = plain_model(config)
    items = encode_all(tokenizer, load_records(config.data), config.max_length)
    plain_train(model, items, tokenizer.pad_token_id, config)
    model.save_pretrained(str(out / "adapter"))
    merged = model.merge_and_unload().eval()
    val = load_records(config.eval_data)[:config.eval_limit]
    val_accuracy, _ = plain_evaluate(merged, tokenizer, val, config.eval_max_new_tokens)
    test_accuracy, test_loss = plain_evaluate(merged, tokenizer, load_records(recipe.test_data),
                                              config.eval_max_new_tokens)
    return {"val_accuracy": val_accuracy, "test_accuracy": test_accuracy, "test_loss": test_loss}


def study_cell(recipe, cell, out: Path, test_records) -> dict:
    from paraknow.study.runner import run_cell

    record = run_cell(recipe, cell, out, test_records)
    if record["state"] != "finished":
        raise SystemExit(f"the {cell.arm} cell ended {record['state']}: {record.get('error')}")
    return {k: record[k] for k in ("val_accuracy", "test_accuracy", "test_loss")}


def estimated(recipe) -> dict:
    """The study's own CPU-seconds estimate of each cell (paraknow.study.budget, at this thread count, before
    the contention and overhead factors), without the export (made before the rounds)."""
    from paraknow.study.budget import calibrate, estimate_study, export_seconds
    from paraknow.study.plan import check_recipe, plan_cells

    sizes = check_recipe(recipe)
    calibration = calibrate(recipe, sizes)
    cells = plan_cells(recipe)
    estimate = estimate_study(recipe, cells, sizes, calibration)  # each PKT arm counted as making its export
    return {c.arm: round(estimate.cpu_cells[c.cell_id][1] - (export_seconds(recipe, recipe.arm(c.arm), sizes,
                                                                            calibration) if c.arm == "pkt" else 0), 2)
            for c in cells}


def run_rounds(recipe, root: Path, rounds: int) -> dict:
    from paraknow.core.data import load_records
    from paraknow.study.exports import cell_export
    from paraknow.study.plan import plan_cells

    study = root / "study"
    cells = {c.arm: c for c in plan_cells(recipe)}
    export = str(cell_export(recipe, recipe.arm("pkt"), 0, study, "cpu"))  # made once, outside the timing
    test_records = load_records(recipe.test_data)
    sides = {"cell": lambda arm, r: study_cell(recipe, cells[arm], study, test_records),
             "plain": lambda arm, r: plain_cell(recipe, arm, "vanilla" if arm == "vanilla" else export,
                                                root / f"plain-{arm}-{r}")}
    times = {arm: {side: [] for side in sides} for arm in cells}
    numbers = {arm: {} for arm in cells}
    for r in range(rounds):
        for arm in cells:
            for side, fn in sides.items():
                with contextlib.redirect_stdout(io.StringIO()):  # the training's step lines
                    wall, cpu, result = clocked(lambda: fn(arm, r))
                times[arm][side].append({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)})
                numbers[arm][side] = result
                print(f"round {r + 1} {arm:8s} {side:6s} cpu {cpu:7.2f} s  wall {wall:7.2f} s  "
                      + json.dumps({k: round(v, 4) for k, v in result.items()}), flush=True)
    return {"times": times, "numbers": numbers}


def main(argv=None) -> dict:
    import os

    import torch

    from paraknow.core.threads import load_average

    micro_batch, argv = micro_batch_option(argv)
    with study_bench(__doc__, SIZES, lambda root, size: make_recipe(root, size, micro_batch), "bench-cell-",
                     argv) as bench:
        os.environ["PARAKNOW_CACHE"] = str(bench.root / "cache")
        load_before = load_average()
        with contextlib.redirect_stdout(io.StringIO()):
            estimates = [estimated(bench.recipe)]
        measured = run_rounds(bench.recipe, bench.root, bench.size["rounds"])
        with contextlib.redirect_stdout(io.StringIO()):
            estimates.append(estimated(bench.recipe))
    figures = {"size": bench.size_name, "micro_batch": micro_batch, "threads": torch.get_num_threads(),
               "cpu_count": os.cpu_count(),
               "load_average_before": load_before, "load_average_after": load_average(), **measured}
    for arm, sides in measured["times"].items():
        best = {side: {k: min(t[k] for t in runs) for k in ("cpu_s", "wall_s")} for side, runs in sides.items()}
        ratio = {k: round(best["cell"][k] / best["plain"][k], 3) for k in ("cpu_s", "wall_s")}
        figures[f"{arm}_ratio"] = ratio
        print(f"{arm}: cell / plain = {ratio['cpu_s']:.3f}x CPU, {ratio['wall_s']:.3f}x wall "
              f"(target <= 1.15x: {'PASS' if ratio['cpu_s'] <= 1.15 else 'FAIL'})")
    figures["estimates_s"] = estimates
    for arm in estimates[0]:
        cell_cpu = min(t["cpu_s"] for t in measured["times"][arm]["cell"])
        print(f"{arm}: the study's estimate {estimates[0][arm]:.2f} s, then {estimates[1][arm]:.2f} s "
              f"({estimates[1][arm] / estimates[0][arm]:.2f}x; target within 0.8-1.2x), "
              f"against {cell_cpu:.2f} CPU s measured ({estimates[0][arm] / cell_cpu:.2f}x)")
    return bench.report(figures)


if __name__ == "__main__":
    main()
