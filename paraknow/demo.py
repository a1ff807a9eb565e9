"""Rebuild the built-in demo models `demo:teacher`, `demo:teacher-small` and `demo:student`
(docs/method.md).

    python -m paraknow.demo            # all three in one process: over an hour on a CPU
                                       # (each build's time: accuracies.json, wall_seconds)
    python -m paraknow.demo --models teacher-small student --out DIR_B   # one model set per process,
    python -m paraknow.demo --models teacher --out DIR_A                  # in parallel, then merge:
    cp -r DIR_A/teacher DIR_B/ && python -m paraknow.demo --models --out DIR_B
    python -m paraknow.demo --device cuda --eval-every 1000   # a few minutes on a GPU, with curves

Everything comes from fixed seeds: the pre-training text (task-formatted samples from each
built-in task's *corpus pool* (`tasks.corpus_records`), which by construction shares no prompt
and no input with any seed/train/val/test split while following the same answer distribution
-- the `facts` ones quiz every fact of the fictional world as a pre-training corpus would --
and the world's `general_text`), a byte-level BPE tokenizer trained on that text and shared by
all models, and the Llama models (`MODELS`):

    teacher        8 layers, hidden 192, FFN 512, 6 heads / 2 KV heads (GQA), ~3.5M parameters,
                   9000 steps of 32 samples
    teacher-small  6 layers, hidden 160, FFN 416, 4 heads / 2 KV heads, ~2.0M parameters,
                   9000 steps of 32 samples (the teacher's recipe at a smaller size: the second
                   teacher of teacher-size studies, `extract.teacher` in a study recipe)
    student        4 layers, hidden 128, FFN 320, 4 heads / 2 KV heads (GQA), ~0.95M parameters,
                   2000 steps of 32 samples

All are trained from scratch with the same recipe (AdamW, cosine schedule, loss on the
completion tokens of task samples and on every token of the text), each from its own seed. The
student sees fewer steps than the teachers: that, with its smaller size, is what makes it
clearly weaker on every task while leaving room for LoRA fine-tuning to help (tiny models learn
these tasks in sudden jumps; run with `--eval-every` to watch the curves). The weights are
stored in float16 safetensors (each folder also holds `training.json`: its recipe, size and
training time); the script finally reloads the models from disk, evaluates them on each task's
`test` split with `paraknow.runs.evaluate` and writes `accuracies.json` and a README.
`--models` trains only the models named and keeps the others already in `--out` (they must
share the tokenizer; their test results are reused, or measured if missing). The whole output
folder is replaced atomically at the end.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from .core import task_world, tasks
from .core.data import IGNORE_INDEX, Encoded, collate, encode
from .core.errors import ParaknowError
from .core.fsio import atomic_directory, atomic_write_json
from .core.models import DEMO_DIR, DEMO_MODELS

SEED = 1234
SPECIAL_TOKENS = ["<pad>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
VOCAB_SIZE = 1536  # the BPE stops earlier (about 1030 tokens): every world name becomes one token
# GPT-2 style pre-tokenisation, except that every digit is its own piece (with an optional
# leading space), which makes multi-digit arithmetic learnable for tiny models.
PRETOKENIZE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\([A-Z]\)| ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@dataclass
class ModelSpec:
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    steps: int
    lr: float
    batch: int = 32


TEACHER = ModelSpec(layers=8, hidden=192, ffn=512, heads=6, kv_heads=2, steps=9000, lr=1.5e-3)
TEACHER_SMALL = ModelSpec(layers=6, hidden=160, ffn=416, heads=4, kv_heads=2, steps=9000, lr=1.5e-3)
STUDENT = ModelSpec(layers=4, hidden=128, ffn=320, heads=4, kv_heads=2, steps=2000, lr=2e-3)
# label (the folder under demo_models/ and the `demo:LABEL` reference) -> recipe
MODELS = dict(zip(DEMO_MODELS, (TEACHER, TEACHER_SMALL, STUDENT)))
TRAINING_FILE = "training.json"  # in each model folder: its recipe, size and training time
SEEDS = {"teacher": SEED, "student": SEED + 1, "teacher-small": SEED + 2}
# How many task-formatted corpus samples of each task the pre-training pool holds (as many as the
# previous pair saw from its train split plus extra samples; no split record is among them).
CORPUS = {"arith": 5000, "facts": 9000, "instruct": 5000}
N_TEXT = 4000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------
# Data


def training_records() -> tuple[list[dict], list[str]]:
    """(task-formatted corpus records, general-text paragraphs) the demo models pre-train on."""
    records = [r for name in tasks.TASKS for r in tasks.corpus_records(name, CORPUS[name], seed=0)]
    leaked = tasks.split_overlap(records)
    if leaked:
        raise RuntimeError(f"the pre-training corpus contains split records: {leaked[:5]}")
    return records, task_world.general_text(N_TEXT, seed=0)


def build_tokenizer(records: list[dict], texts: list[str]):
    """Byte-level BPE trained on the training text, wrapped as a transformers fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)

    def corpus():
        for r in records:
            for m in r["messages"]:
                yield m["content"]
        yield from texts

    tok.train_from_iterator(corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>",
                                        model_max_length=2048)
    tokenizer.chat_template = None
    return tokenizer


def encode_pool(tokenizer, records: list[dict], texts: list[str]) -> list[Encoded]:
    items = [encode(tokenizer, r) for r in records] + [encode(tokenizer, {"text": t}) for t in texts]
    return [it for it in items if any(l != IGNORE_INDEX for l in it.labels)]


def batches(items: list[Encoded], batch: int, steps: int, rng: random.Random):
    """`steps` batches over shuffled epochs; each batch holds samples of similar length."""
    produced = 0
    while True:
        order = list(range(len(items)))
        rng.shuffle(order)
        chunk = batch * 32
        epoch = []
        for s in range(0, len(order), chunk):
            part = sorted(order[s:s + chunk], key=lambda i: len(items[i].input_ids))
            epoch += [part[j:j + batch] for j in range(0, len(part), batch)]
        rng.shuffle(epoch)
        for b in epoch:
            yield [items[i] for i in b]
            produced += 1
            if produced >= steps:
                return


# ---------------------------------------------------------------------------------------
# Models


def make_model(spec: ModelSpec, tokenizer, seed: int):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden, intermediate_size=spec.ffn,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads, head_dim=spec.hidden // spec.heads,
        max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False, initializer_range=0.02,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id,
                                               do_sample=False, max_new_tokens=128)
    return model


def train(model, items: list[Encoded], spec: ModelSpec, pad_id: int, seed: int, label: str,
          on_checkpoint: Callable[[int], None] | None = None, every: int = 0) -> list[float]:
    """Train in place; `on_checkpoint(step)` runs every `every` steps (0: never)."""
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    rng = random.Random(seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=spec.lr, betas=(0.9, 0.98), eps=1e-8)
    warmup = max(1, spec.steps // 30)

    def lr_at(step):
        if step < warmup:
            return spec.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, spec.steps - warmup)
        return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    history, running, start = [], None, time.time()
    for step, batch in enumerate(batches(items, spec.batch, spec.steps, rng)):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        tensors = {k: v.to(device) for k, v in collate(batch, pad_id).items()}
        out = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"],
                    labels=tensors["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = out.loss.item()
        running = loss if running is None else 0.98 * running + 0.02 * loss
        history.append(loss)
        if (step + 1) % 100 == 0 or step + 1 == spec.steps:
            log(f"{label} step {step + 1}/{spec.steps} loss {running:.3f} "
                f"({time.time() - start:.0f}s)")
        if on_checkpoint is not None and every and (step + 1) % every == 0 and step + 1 < spec.steps:
            model.eval()
            on_checkpoint(step + 1)
            model.train()
    model.eval()
    return history


def save_model(model, tokenizer, path: Path) -> None:
    model = model.to(torch.float16)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    model.to(torch.float32)


def evaluate_dir(path: Path, n_test: int | None, max_new_tokens: int, device: str = "cpu") -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model.eval()
    return evaluate_model(model, tokenizer, n_test, max_new_tokens)


def evaluate_model(model, tokenizer, n_test: int | None, max_new_tokens: int) -> dict:
    """Exact-match accuracy and loss of `model` on each task's test split (first n_test)."""
    from .runs.evaluate import evaluate

    out = {}
    for name in tasks.TASKS:
        records = tasks.task_records(name, "test")[:n_test]
        result = evaluate(model, tokenizer, records, max_new_tokens=max_new_tokens, batch_size=32)
        out[name] = {"accuracy": result.accuracy, "loss": round(result.loss, 4), "n": result.n,
                     "correct": "".join("1" if p["correct"] else "0" for p in result.predictions)}
    return out


def _train_one(label: str, spec: ModelSpec, tokenizer, items: list[Encoded], out: Path,
               device: str, max_new_tokens: int, eval_every: int) -> dict:
    """Train model `label` from its fixed seed, save it under out/label; its report entry."""
    seed = SEEDS[label]
    model = make_model(spec, tokenizer, seed).to(device)

    def checkpoint(step):
        accs = evaluate_model(model, tokenizer, 100, max_new_tokens)
        log(f"{label} step {step} test (100 each): "
            + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in accs.items()))

    n_params = sum(p.numel() for p in model.parameters())
    log(f"{label}: {spec.layers} layers, hidden {spec.hidden}, {n_params / 1e6:.2f}M params, "
        f"{spec.steps} steps of {spec.batch}")
    t1 = time.time()
    history = train(model, items, spec, tokenizer.pad_token_id, seed, label, checkpoint, eval_every)
    save_model(model, tokenizer, out / label)
    entry = {"spec": asdict(spec), "params": n_params, "train_seconds": round(time.time() - t1, 1),
             "final_train_loss": round(sum(history[-50:]) / len(history[-50:]), 4)}
    atomic_write_json(out / label / TRAINING_FILE, entry)
    return entry


def _kept(out_dir: Path, trained: dict[str, ModelSpec]) -> dict[str, dict]:
    """Report entries of the models already in out_dir that this build does not retrain: each
    model folder's TRAINING_FILE, plus its `test` results from out_dir's accuracies.json when
    that has them (else they are measured again)."""
    previous = json.loads((out_dir / "accuracies.json").read_text()) \
        if (out_dir / "accuracies.json").exists() else {}
    return {label: {**json.loads((out_dir / label / TRAINING_FILE).read_text()),
                    **({"test": previous[label]["test"]} if "test" in previous.get(label, {}) else {})}
            for label in MODELS if label not in trained and (out_dir / label / TRAINING_FILE).exists()}


def build(out_dir: Path, trained: dict[str, ModelSpec] | None = None, n_test: int | None = None,
          max_new_tokens: int = 64, device: str = "cpu", eval_every: int = 0) -> dict:
    """Train the models in `trained` (label -> spec; default: all of MODELS) into out_dir, keep the
    other models already there (one tokenizer for all), evaluate, write the report and README."""
    trained = dict(MODELS) if trained is None else trained
    t0 = time.time()
    random.seed(SEED)
    torch.manual_seed(SEED)
    records, texts = training_records()
    log(f"data: {len(records)} task samples, {len(texts)} text paragraphs")
    tokenizer = build_tokenizer(records, texts)
    items = encode_pool(tokenizer, records, texts)
    n_tokens = sum(len(it.input_ids) for it in items)
    log(f"tokenizer: vocab {len(tokenizer)}; pool {len(items)} samples, {n_tokens} tokens "
        f"({time.time() - t0:.0f}s)")
    report = {"seed": SEED, "vocab_size": len(tokenizer), "max_new_tokens": max_new_tokens,
              "pool_samples": len(items), "pool_tokens": n_tokens, "torch_threads": torch.get_num_threads()}
    out_dir = Path(out_dir)
    kept = _kept(out_dir, trained)
    with atomic_directory(out_dir, replaces="accuracies.json") as tmp:
        for label in kept:
            shutil.copytree(out_dir / label, tmp / label)
            saved = json.loads((tmp / label / "tokenizer.json").read_text())["model"]
            if saved != json.loads(tokenizer.backend_tokenizer.to_str())["model"]:
                raise ParaknowError(f"{out_dir / label} was trained with another tokenizer: "
                                    f"rebuild it too (--models {label}).")
            report[label] = kept[label]
        for label, spec in trained.items():
            report[label] = _train_one(label, spec, tokenizer, items, tmp, device, max_new_tokens, eval_every)
        labels = [label for label in MODELS if label in report]
        for label in labels:
            if "test" not in report[label] or label in trained:
                t1 = time.time()
                report[label]["test"] = evaluate_dir(tmp / label, n_test, max_new_tokens, device)
                log(f"{label} test: " + ", ".join(f"{k} {v['accuracy']:.3f}"
                                                   for k, v in report[label]["test"].items())
                    + f" ({time.time() - t1:.0f}s)")
        report["accuracies"] = {name: {**{label: report[label]["test"][name]["accuracy"] for label in labels},
                                       "n": report[labels[0]]["test"][name]["n"]}
                                for name in tasks.TASKS}
        report["wall_seconds"] = round(time.time() - t0, 1)
        atomic_write_json(tmp / "accuracies.json", report)
        write_readme(tmp, report, labels)
    log(f"done in {time.time() - t0:.0f}s -> {out_dir}")
    return report


def write_readme(path: Path, report: dict, labels: list[str]) -> None:
    acc = report["accuracies"]
    rows = "\n".join(f"| {name} | " + " | ".join(f"{row[label]:.3f}" for label in labels) + f" | {row['n']} |"
                     for name, row in acc.items())
    specs = "\n".join(
        f"| {label} | {s['layers']} | {s['hidden']} | {s['ffn']} | {s['heads']} / {s['kv_heads']} | "
        f"{report[label]['params']:,} | {s['steps']} x {s['batch']} | {report[label]['train_seconds'] / 60:.0f} |"
        for label in labels for s in [report[label]["spec"]])
    text = f"""# Built-in demo models

{", ".join(f"`demo:{label}`" for label in labels)}: small Llama models trained from scratch by
`python -m paraknow.demo` (fixed seeds; see that module's docstring for the recipe). They share
one byte-level BPE tokenizer ({report['vocab_size']} tokens, no chat template, so paraknow's
`<|user|>` / `<|assistant|>` fallback format is used). Weights are float16 safetensors and load
as float32. `demo:teacher-small` sits between the two in size (same corpus, same steps as the
teacher): the second teacher for teacher-size studies (`extract.teacher` in a study recipe).

| model | layers | hidden | FFN | heads / KV heads | parameters | training steps x batch | training minutes |
|---|---|---|---|---|---|---|---|
{specs}

Exact-match accuracy on each built-in task's `test` split (greedy decoding,
`paraknow.runs.evaluate`, measured on the shipped float16 weights):

| task | {" | ".join(labels)} | n |
|---|{"---|" * len(labels)}---|
{rows}

The pre-training corpus shares no prompt and no input (the set of words of an `instruct` list, an `arith`
operation with its operands) with any `seed`/`train`/`val`/`test` record, while its answers
follow the same distribution as the splits' (`paraknow.core.tasks`, docs/method.md). The
student is smaller *and* trained for fewer steps than the teachers: that is what leaves it
clearly weaker on every task, with room for LoRA fine-tuning (and parametric knowledge
transfer) to help. `accuracies.json` holds the full report, including which test samples
each model answers correctly. Training minutes are wall-clock time on the machine that built the
model, which may have been shared with other work; the last build step (`python -m paraknow.demo`,
or `--models` with no model to merge models trained in separate processes and evaluate them)
took {report['wall_seconds'] / 60:.1f} minutes with {report['torch_threads']} torch thread(s).
"""
    (path / "README.md").write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paraknow.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(DEMO_DIR), help="output folder (default: the package's demo_models/)")
    parser.add_argument("--models", nargs="*", default=list(MODELS), metavar="LABEL",
                        help=f"which models to (re)train, of {', '.join(MODELS)} (default: all); the others "
                             "already in --out are kept (re-evaluated if their results are missing)")
    for label, spec in MODELS.items():
        parser.add_argument(f"--{label}-steps", type=int, default=spec.steps)
    parser.add_argument("--n-test", type=int, default=None, help="evaluate on the first N test samples only")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is faster on a busy machine)")
    parser.add_argument("--device", default="cpu", help="torch device to train on (default: cpu)")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="also print test accuracies (first 100 of each task) every N steps")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"--models {' '.join(unknown)}: unknown; choose among {', '.join(MODELS)}")
    if args.device != "cpu" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    trained = {label: ModelSpec(**{**asdict(MODELS[label]),
                                   "steps": getattr(args, f"{label.replace('-', '_')}_steps")})
               for label in args.models}
    try:
        report = build(Path(args.out), trained, n_test=args.n_test, device=args.device,
                       eval_every=args.eval_every)
    except ParaknowError as exc:
        parser.exit(2, f"python -m paraknow.demo: {exc}\n")
    print(json.dumps(report["accuracies"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
