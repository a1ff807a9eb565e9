"""GSM8K accuracy of the real pair's untuned student and teacher (docs/real-pair.md), scored by `paraknow eval`'s
own function, and the cross-check against lm-evaluation-harness on the same items.

    python bench/bench_real_pair_gsm8k.py --data test_1319.jsonl --limit 200 --chunk 100 --threads 2 --lm-eval \
        --out docs/results/real_pair_gsm8k.json

For each model (student, then teacher; float32, `paraknow eval`'s default dtype) it scores the first `--limit`
records of `--data` with `paraknow.runs.evaluate.evaluate` (greedy, `--match numeric`), `--chunk` records at a
time in file order, and stops after the chunk that passes that model's `--minutes` (the slice scored is the
first `n` items: the figure is written with its `n`). With `--lm-eval` (optional: `pip install lm-eval`, see
docs/method.md) lm-evaluation-harness then scores the same `n` items on the same loaded model, through a
local-file task with the same prompt (the record's user turn in the model's chat template, no few-shot) and
its GSM8K task's answer filters (`strict-match`: after "####"; `flexible-extract`: the last number). Per item
the output records both generations and each evaluator's verdict on both generations, so a disagreement
is told apart as a generation difference or an answer-extraction difference; `--lm-eval-limit N` has
lm-eval score only the first N of those items (the teacher's generations cost hours on a CPU). Results are written after
every step (an interrupted run keeps what it finished), with the thread count and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from common import add_threads_option, set_threads, write_figures

from paraknow.core.models import quiet_transformers

MODELS = {"student": "bundled:qwen2.5-coder-0.5b-instruct", "teacher": "bundled:qwen2.5-coder-1.5b-instruct"}
TASK = "paraknow_gsm8k_local"
# lm-eval's own GSM8K task (lm_eval/tasks/gsm8k/gsm8k.yaml, v3.0): its metric and answer filters, unchanged
LM_EVAL_TASK = """
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{messages[0].content}}}}"
doc_to_target: "{{{{answer}}}}"
num_fewshot: 0
generation_kwargs:
  until: []
  do_sample: false
  max_gen_toks: {max_new_tokens}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore: [",", "\\\\$", "(?s).*#### ", "\\\\.$"]
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
      - function: take_first
  - name: flexible-extract
    filter:
      - function: regex
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
      - function: take_first
metadata:
  version: 1.0
"""
FILTERS = ("strict-match", "flexible-extract")
SMOKE_DATA = "task:arith:test"


def paraknow_scores(model, tokenizer, records: list, args, minutes: float) -> dict:
    """`paraknow eval`'s scoring of the first records, `args.chunk` at a time, until `minutes` have passed."""
    from paraknow.runs.evaluate import evaluate

    predictions, t0, losses = [], time.perf_counter(), []
    for start in range(0, len(records), args.chunk):
        chunk = records[start:start + args.chunk]
        result = evaluate(model, tokenizer, chunk, max_new_tokens=args.max_new_tokens, batch_size=args.chunk,
                          match="numeric")
        predictions += [{**p, "index": start + p["index"]} for p in result.predictions]
        losses.append(result.loss * len(chunk))
        elapsed = time.perf_counter() - t0
        print(f"  paraknow eval: {len(predictions)} items, {sum(p['correct'] for p in predictions)} correct, "
              f"{elapsed:.0f} s; load average {os.getloadavg()[0]:.1f}", flush=True)
        if elapsed > minutes * 60:
            break
    n = len(predictions)
    return {"n": n, "accuracy": sum(p["correct"] for p in predictions) / n, "loss": sum(losses) / n,
            "seconds": round(time.perf_counter() - t0, 1), "predictions": predictions}


def lm_eval_scores(model, tokenizer, records: list, args) -> dict:
    """lm-evaluation-harness on the same records and loaded model (a local-file task, module docstring)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from paraknow.core.records import to_jsonl

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "items.jsonl"
        data.write_text(to_jsonl(records))
        (Path(tmp) / f"{TASK}.yaml").write_text(LM_EVAL_TASK.format(task=TASK, data=json.dumps(str(data)),
                                                                     max_new_tokens=args.max_new_tokens))
        lm = HFLM(pretrained=model, tokenizer=tokenizer, device=str(model.device), batch_size=args.chunk,
                  max_length=2048)
        out = simple_evaluate(model=lm, tasks=[TASK], task_manager=TaskManager(include_path=tmp),
                              apply_chat_template=bool(getattr(tokenizer, "chat_template", None)),
                              log_samples=True, num_fewshot=0)
    by_item = {}
    for sample in out["samples"][TASK]:
        item = by_item.setdefault(sample["doc_id"], {"response": sample["resps"][0][0]})
        item[sample["filter"]] = {"extracted": sample["filtered_resps"][0], "correct": bool(sample["exact_match"])}
    items = [by_item[i] for i in range(len(records))]
    return {"n": len(items), "lm_eval_version": _version("lm_eval"),
            "accuracy": {f: sum(i[f]["correct"] for i in items) / len(items) for f in FILTERS},
            "seconds": round(time.perf_counter() - t0, 1), "items": items}


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist.replace("_", "-"))


def cross_check(records: list, ours: dict, theirs: dict) -> dict:
    """Item by item: each evaluator's verdict on its own generation and on the other's (the generations
    differ, or the answer extraction does)."""
    from lm_eval.filters.extraction import RegexFilter

    from paraknow.runs.evaluate import is_correct

    flexible = RegexFilter(regex_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)

    def lm_eval_verdict(text: str, answer: str) -> bool:  # flexible-extract + exact_match's normalisation
        extracted = flexible.apply([[text]], [None])[0][0]
        return _normalise(extracted) == _normalise(answer)

    rows = []
    for record, p, item in zip(records, ours["predictions"], theirs["items"]):
        rows.append({"id": record.get("id"), "answer": record["answer"],
                     "same_generation": p["prediction"].strip() == item["response"].strip(),
                     "paraknow_on_paraknow": p["correct"], "paraknow_on_lm_eval": is_correct(record, item["response"],
                                                                                          "numeric"),
                     "lm_eval_on_lm_eval": item["flexible-extract"]["correct"],
                     "lm_eval_on_paraknow": lm_eval_verdict(p["prediction"], record["answer"]),
                     "lm_eval_extracted": item["flexible-extract"]["extracted"]})
    n = len(rows)
    share = {key: sum(r[key] for r in rows) / n for key in ("same_generation", "paraknow_on_paraknow",
                                                          "paraknow_on_lm_eval", "lm_eval_on_lm_eval",
                                                          "lm_eval_on_paraknow")}
    return {"n": n, **share, "verdicts_differ": [r["id"] for r in rows
                                                 if r["paraknow_on_paraknow"] != r["lm_eval_on_lm_eval"]],
            "items": rows}


def _normalise(text: str) -> str:
    """lm-eval's exact_match preprocessing in the GSM8K task (regexes_to_ignore, then case)."""
    import re

    for pattern in (",", r"\$", r"(?s).*#### ", r"\.$"):
        text = re.sub(pattern, "", text)
    return text.strip().lower()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", help="GSM8K test records (JSONL, the messages format)")
    parser.add_argument("--limit", type=int, default=200, help="score at most the first N records")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--minutes", type=float, nargs="+", default=[60.0],
                        help="paraknow eval's time box per model, in --models order (the last one repeats)")
    parser.add_argument("--chunk", type=int, default=100,
                        help="records scored per batch (100 in docs/real-pair.md's runs)")
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--lm-eval", action="store_true", help="also score the same items with lm-eval")
    parser.add_argument("--lm-eval-limit", type=int, default=None,
                        help="with --lm-eval: only the first N of the items paraknow eval scored")
    parser.add_argument("--smoke", action="store_true",
                        help="the demo pair on 4 arith test records, 16 tokens (plumbing, seconds)")
    parser.add_argument("--out", default=None, help="write the figures to this JSON file")
    add_threads_option(parser, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    quiet_transformers()
    from paraknow.core.data import load_records
    from paraknow.core.models import load_model

    if args.smoke:
        args.data, args.limit, args.chunk, args.max_new_tokens = SMOKE_DATA, 4, 2, 16
    if not args.data:
        parser.error("--data is required (GSM8K test records as JSONL), or --smoke")
    records = load_records(args.data)[:args.limit]
    refs = {"student": "demo:student", "teacher": "demo:teacher"} if args.smoke else MODELS
    figures = {"data": args.data, "limit": args.limit, "max_new_tokens": args.max_new_tokens, "match": "numeric",
               "dtype": "float32", "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
               "load_average_start": list(os.getloadavg()), "models": {}}
    for i, name in enumerate(args.models):
        minutes = args.minutes[min(i, len(args.minutes) - 1)]
        print(f"{name}: {refs[name]}, paraknow eval for up to {minutes:g} min", flush=True)
        model, tokenizer = load_model(refs[name])
        entry = figures["models"][name] = {"ref": refs[name], "paraknow": paraknow_scores(model, tokenizer, records,
                                                                                        args, minutes)}
        _write(args, figures)
        if args.lm_eval:
            scored = records[:min(entry["paraknow"]["n"], args.lm_eval_limit or len(records))]
            entry["lm_eval"] = lm_eval_scores(model, tokenizer, scored, args)
            entry["cross_check"] = cross_check(scored, entry["paraknow"], entry["lm_eval"])
            print(f"  lm-eval: {json.dumps(entry['lm_eval']['accuracy'])}; same generation on "
                  f"{entry['cross_check']['same_generation']:.0%} of items", flush=True)
            _write(args, figures)
        del model


def _write(args, figures: dict) -> None:
    figures["load_average_end"] = list(os.getloadavg())
    if args.out:
        write_figures(args.out, figures)


if __name__ == "__main__":
    main()
