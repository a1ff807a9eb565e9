"""Planning time of the structure-aware options against today's submatrix plan, side by side.

    python bench/bench_structure.py [--smoke] [--repeats N] [--threads N] [--out FILE.json]

Teacher: SmolLM2-135M's shapes (30 layers, hidden 576, 9 query / 3 key-value heads, head_dim 64,
FFN 1536, vocabulary 49152); student: the SmolLM-shaped student of bench_extract_smollm.py
(15 layers, hidden 384, 6 / 2 heads, head_dim 64, FFN 1024). The sensitivity map is random
(uniform [0, 1)) in those shapes, so no model is downloaded. Every option plans the same
modules (attention + FFN) with the sensitivity layer map; the ratio is its median plan time
over the submatrix plan's (target <= 2x for heads and coherent). --smoke shrinks the shapes so
the test suite can run it in seconds; its ratios say nothing about speed.
"""
from __future__ import annotations

import statistics
import time

import torch
from common import parse_scale_args, scale_parser, write_figures
from transformers import LlamaConfig

from paraknow.core.architecture import EMBED_ROLES, LAYER_ROLES, describe_config
from paraknow.transfer.plan import TransferConfig, plan_transfer

SHAPES = {  # name -> (teacher, student): layers, hidden, ffn, heads, kv heads, head_dim, vocab
    "smollm2-135m": ((30, 576, 1536, 9, 3, 64, 49152), (15, 384, 1024, 6, 2, 64, 49152)),
    "smoke": ((4, 64, 96, 8, 2, 16, 300), (2, 32, 48, 4, 1, 8, 300)),  # rank 4 fits both
}
OPTIONS = [  # (structure, coherent); the first is today's plan, the baseline of every ratio
    ("submatrix", "off"), ("heads", "off"), ("heads", "layer"), ("heads", "model"),
    ("submatrix", "layer"), ("submatrix", "model"), ("rowcol", "layer"),
]
TARGETED = {"heads", "layer", "model"}  # options the <= 2x target applies to


def info(layers, hidden, ffn, heads, kv_heads, head_dim, vocab):
    return describe_config(LlamaConfig(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=ffn,
                                       num_attention_heads=heads, num_key_value_heads=kv_heads,
                                       head_dim=head_dim, vocab_size=vocab))


def random_scores(teacher, seed=0) -> dict:
    """A sensitivity map of the teacher's weight shapes, uniform [0, 1)."""
    g = torch.Generator().manual_seed(seed)
    scores = {teacher.param_name(None, r): torch.rand(*teacher.shapes[r], generator=g) for r in EMBED_ROLES}
    for layer in range(teacher.n_layers):
        for role in LAYER_ROLES:
            scores[teacher.param_name(layer, role)] = torch.rand(*teacher.shapes[role], generator=g)
    return scores


def main() -> None:
    ap = scale_parser("tiny shapes, one run each (for the test suite)")
    ap.add_argument("--repeats", type=int, default=5, help="plans per option (median)")
    args = parse_scale_args(ap)
    name = "smoke" if args.smoke else "smollm2-135m"
    repeats = 1 if args.smoke else args.repeats
    teacher, student = (info(*shape) for shape in SHAPES[name])
    scores = random_scores(teacher)
    print(f"{name}: teacher {teacher.n_layers} layers d={teacher.hidden_size} -> student {student.n_layers} "
          f"layers d={student.hidden_size}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {repeats} plans, attention + FFN")

    def plan(structure, coherent):
        return plan_transfer(teacher, student, scores, TransferConfig(rank=4, structure=structure, coherent=coherent))

    # interleaved: every round plans each option once, so load drift hits all options alike
    times = {option: [] for option in OPTIONS}
    results = {option: plan(*option) for option in OPTIONS}  # warm-up round, untimed
    for _ in range(repeats):
        for option in OPTIONS:
            t0 = time.perf_counter()
            plan(*option)
            times[option].append(time.perf_counter() - t0)
    base = statistics.median(times[OPTIONS[0]])
    print(f"  {'structure':<11}{'coherent':<10}{'plan time':>11}{'vs submatrix':>14}  {'mean lift':>9}")
    figures = {"shapes": name, "repeats": repeats, "threads": torch.get_num_threads(), "options": []}
    for (structure, coherent), option_times in times.items():
        seconds = statistics.median(option_times)
        ratio = seconds / base
        modules = results[structure, coherent].modules
        lift = sum(m.lift for m in modules) / len(modules)
        verdict = ""
        if {structure, coherent} & TARGETED and not args.smoke:
            verdict = "  (target <= 2x: " + ("PASS)" if ratio <= 2 else "FAIL)")
        print(f"  {structure:<11}{coherent:<10}{seconds * 1e3:>9.1f}ms{ratio:>13.2f}x  {lift:>9.3f}{verdict}")
        figures["options"].append({"structure": structure, "coherent": coherent, "seconds": seconds,
                                   "ratio_vs_submatrix": ratio, "mean_lift": lift})
    if args.out:
        write_figures(args.out, figures)

if __name__ == "__main__":
    main()
