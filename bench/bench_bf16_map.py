"""Sensitivity with the teacher's weights in bfloat16 (float32 sums) against all-float32, on the
real SmolLM2-135M-Instruct: does the map lead to the same transfer?

Both maps are computed over the same seed samples; then the layer ranking (sum of each decoder
layer's sensitivity), the paper's layer map and every module's selected block for a SmolLM-shaped
student (`make_student`, as in bench_extract_smollm.py) are compared, with the rank correlation of
the per-layer sums. Memory is bench_sensitivity.py's part (--dtype bfloat16).

    python bench/bench_bf16_map.py [--data task:arith:seed] [--samples 32] [--smoke] [--out FILE]

--smoke: the demo pair and 2 samples (seconds; no SmolLM2 needed).
"""
from __future__ import annotations

import argparse
import time

from bench_extract_smollm import TEACHER, make_student
from common import add_threads_option, set_threads, write_figures

from paraknow.core.models import quiet_transformers


def ranking(values: list[float]) -> list[int]:
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="task:arith:seed")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--smoke", action="store_true", help="the demo pair and 2 samples (for the tests)")
    ap.add_argument("--out", default=None)
    add_threads_option(ap)
    args = ap.parse_args()
    set_threads(args.threads)
    if args.smoke:
        args.samples = 2
    quiet_transformers()
    from scipy.stats import spearmanr

    from paraknow.core.architecture import describe
    from paraknow.core.data import load_records
    from paraknow.core.models import load_model
    from paraknow.extract import captured_share, oriented
    from paraknow.transfer.mapping import layer_scores
    from paraknow.transfer.plan import TransferConfig, plan_transfer
    from paraknow.transfer.sensitivity import SensitivityConfig, compute_sensitivity

    teacher_ref, student_ref = ("demo:teacher", "demo:student") if args.smoke else (TEACHER, str(make_student()))
    records = load_records(args.data)
    student, student_tok = load_model(student_ref)
    s_info = describe(student, student_tok)
    plans, sums, seconds = {}, {}, {}
    for dtype in ("float32", "bfloat16"):
        teacher, tok = load_model(teacher_ref, dtype=dtype)
        t_info = describe(teacher, tok)
        t0 = time.perf_counter()
        scores = compute_sensitivity(teacher, tok, records, SensitivityConfig(samples=args.samples,
                                                                              max_length=args.max_length))
        seconds[dtype] = time.perf_counter() - t0
        sums[dtype] = layer_scores(scores, t_info.n_layers)
        plans[dtype] = plan_transfer(t_info, s_info, scores, TransferConfig())
        print(f"{dtype}: sensitivity {seconds[dtype]:.1f} s, layer map {plans[dtype].layer_map}", flush=True)
        if dtype == "float32":
            reference = scores  # the float32 map judges both plans' blocks
        del teacher, scores
    modules = {dtype: {m.student_module: m for m in plan.modules} for dtype, plan in plans.items()}
    differing = sorted(name for name, m in modules["float32"].items()  # by the block's top-left (row, col)
                       if m.selection.block() != modules["bfloat16"][name].selection.block())

    # where the blocks differ: the share of the float32 map each block captures (float32's own is the best)
    def share(module):  # of the float32 map, in the orientation the module's selection indexes
        return captured_share(oriented(reference[module.teacher_param], module.transposed), module.selection)

    captured = {name: {dtype: share(modules[dtype][name]) for dtype in plans} for name in differing}
    assert all(abs(captured[n]["float32"] - modules["float32"][n].captured) < 1e-9 for n in differing)  # orientation
    rho = float(spearmanr(sums["float32"], sums["bfloat16"]).statistic)
    same_ranking = ranking(sums["float32"]) == ranking(sums["bfloat16"])
    same_map = plans["float32"].layer_map == plans["bfloat16"].layer_map
    print(f"teacher {teacher_ref}, {args.samples} samples of {args.data}")
    print(f"  layer ranking equal: {same_ranking} (Spearman {rho:.4f}); layer map equal: {same_map}")
    print(f"  selected blocks equal: {len(modules['float32']) - len(differing)} of {len(modules['float32'])} modules")
    for name, share in captured.items():
        print(f"    differs: {name}: captures {share['bfloat16'] * 100:.3f} % of the float32 map's sensitivity "
              f"(the float32 block: {share['float32'] * 100:.3f} %)")
    if args.out:
        write_figures(args.out, {"teacher": teacher_ref, "student": student_ref if args.smoke else "smollm-student-15x384",
                                 "data": args.data, "samples": args.samples, "seconds": seconds,
                                 "layer_sums": sums, "spearman": rho, "same_ranking": same_ranking,
                                 "layer_map": {k: p.layer_map for k, p in plans.items()}, "same_layer_map": same_map,
                                 "modules": len(modules["float32"]), "differing_blocks": differing,
                                 "captured_share_of_float32_map": captured, "smoke": args.smoke})


if __name__ == "__main__":
    main()
