"""A non-finite loss on one rank of a multi-process training fails the whole run with a reason: the
logged loss is gathered over every process and the gradients are all-reduced, so every rank sees
it at the same step and stops (paraknow.runs.train_callback.RunCallback.on_log)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import SEED_RECORDS, make_tokenizer, tiny_llama

ROOT = Path(__file__).resolve().parents[1]

# `python -m paraknow` whose rank 1 alone computes a NaN loss from its third micro-batch on
POISONED_RANK = """
import itertools, os, sys
from paraknow.runs import train_loss
if os.environ.get("RANK") == "1":
    original, calls = train_loss.CompletionTrainer.compute_loss, itertools.count()
    def poisoned(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if next(calls) >= 2 else loss
    train_loss.CompletionTrainer.compute_loss = poisoned
from paraknow.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_nan_loss_on_one_rank_fails_the_run_on_every_rank_with_a_reason(tmp_path):
    student = tmp_path / "student"
    tiny_llama(layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, seed=2).save_pretrained(student)
    make_tokenizer().save_pretrained(student)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in SEED_RECORDS * 2))
    script = tmp_path / "poisoned.py"
    script.write_text(POISONED_RANK)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         "train", "--student", str(student), "--data", str(data), "--out", str(out), "--epochs", "3",
         "--batch", "2", "--micro-batch", "1", "--rank", "4", "--max-length", "128", "--device", "cpu"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)))
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "x 2 processes" in proc.stdout, proc.stderr[-2000:]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed", status
    assert status["error"].startswith("training diverged: the ") and " is nan at step " in status["error"]
    assert proc.stderr.count("error: training diverged") == 2, proc.stderr[-3000:]  # both ranks, one line each
    assert "/paraknow/" not in proc.stderr  # no traceback through paraknow (torchrun reports its children's exit)
    assert not (out / "adapter").exists()  # a NaN model is never saved as trained
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps and steps[-1]["step"] < status["max_steps"]  # stopped at that step, not after every epoch
