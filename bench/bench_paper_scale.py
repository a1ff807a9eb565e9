"""Plan + factorise at the paper's scale, one layer at a time, with a projection to whole models.

    python bench/bench_paper_scale.py [--smoke] [--pairs llama2-13b-7b,gqa-70b-8b] [--layers 1]
                                      [--threads N] [--no-check] [--device cpu|cuda] [--out bench/out/paper_scale.json]

Pairs (random weights, random sensitivity; shapes from `describe_config` of a LlamaConfig):
  llama2-13b-7b  Llama-2-13B -> 7B: 40 -> 32 layers, d 5120 -> 4096, FFN 13824 -> 11008, vocab 32000
  gqa-70b-8b     70B-like -> 8B-like: 80 -> 32 layers, d 8192 -> 4096, FFN 28672 -> 14336,
                 64/8 -> 32/8 heads of 128, vocab 128256
Per module of a student layer, the same steps as `plan_transfer` + `extract_factors`: the teacher
layer's score sum (`layer_scores`, for the layer map), the block search `select('submatrix')` + `captured_share` (plan)
and `Selection.apply` + `factorise` (svd auto). Only one module's weight and scores exist at a
time, so even the 70B-like layers fit in a few GB; the embeddings are the largest single step.
Projected total = teacher layers x score time + student layers x (plan + factorise) per layer
+ embed_tokens + lm_head. Targets: 13B -> 7B projected <= 5 minutes. The rank-16 error of the
randomized SVD against the exact one is checked on one module (--check-role, first layer).
--device cuda: the teacher weights live on the GPU and `factorise` runs there (the sensitivity
scores and the block search stay on the host, as in `plan_transfer`). --smoke: tiny shapes of the
same structure, for the test suite.
"""
from __future__ import annotations

import resource
import time
from functools import partial

import torch
from common import parse_scale_args, scale_parser, write_figures
from transformers import LlamaConfig

from paraknow.core.architecture import EMBED_ROLES, LAYER_ROLES, describe_config
from paraknow.extract import captured_share, select
from paraknow.transfer.lora import factorise, scaling
from paraknow.transfer.mapping import layer_scores

RANK, ALPHA = 16, 16
# (layers, hidden, ffn, heads, kv heads, vocab) of teacher and student; head_dim 128 throughout
PAIRS = {
    "llama2-13b-7b": ((40, 5120, 13824, 40, 40, 32000), (32, 4096, 11008, 32, 32, 32000)),
    "gqa-70b-8b": ((80, 8192, 28672, 64, 8, 128256), (32, 4096, 14336, 32, 8, 128256)),
}
SMOKE_PAIRS = {  # same structure, head_dim 16
    "llama2-13b-7b": ((5, 80, 216, 5, 5, 300), (4, 64, 172, 4, 4, 300)),
    "gqa-70b-8b": ((6, 128, 448, 8, 2, 500), (4, 64, 224, 4, 2, 500)),
}


def info(layers, hidden, ffn, heads, kv_heads, vocab, head_dim):
    return describe_config(LlamaConfig(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=ffn,
                                       num_attention_heads=heads, num_key_value_heads=kv_heads,
                                       vocab_size=vocab, head_dim=head_dim, tie_word_embeddings=False))


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def clock(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def module_step(t_shape, s_shape, seed: int, check: bool, param: str | None = None, device: str = "cpu") -> dict:
    """Layer-score share (`param`: a decoder layer's weight), plan and factorisation of one teacher
    matrix [o_T, i_T] -> student [o_S, i_S]."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(t_shape, generator=g)  # [o_T, i_T]
    t_score = clock(partial(layer_scores, {param: scores}, 1))[0] if param else 0.0
    t_plan, selection = clock(partial(select, "submatrix", scores, *s_shape))
    t_captured, _ = clock(partial(captured_share, scores, selection))
    del scores  # the float32 scores of a 70B-like matrix: freed before its weight is drawn
    weight = (torch.randn(t_shape, generator=g) * 0.02).to(device)  # [o_T, i_T], the teacher's weight
    t_factorise, factors = clock(lambda: factorise(selection.apply(weight), RANK, ALPHA))  # factors come back on the host
    row = {"teacher": list(t_shape), "student": list(s_shape), "score_s": t_score,
           "plan_s": t_plan + t_captured, "factorise_s": t_factorise, "svd": factors.method}
    if check:
        block = selection.apply(weight).double()  # [o_S, i_S]
        del weight
        t_exact, exact = clock(lambda: factorise(block, RANK, ALPHA, svd="exact"))
        fast = factorise(block, RANK, ALPHA, svd="randomized")
        block = block.cpu()  # the factors come back on the host
        norm = torch.linalg.norm(block)
        errors = {name: float(torch.linalg.norm(block - scaling(RANK, ALPHA) * (f.B.double() @ f.A.double())) / norm)
                  for name, f in (("exact", exact), ("randomized", fast))}
        row["check"] = {"exact_s": t_exact, "relative_error": errors,
                        "error_excess": errors["randomized"] / errors["exact"] - 1}
    return row


def run_pair(name, shapes, layers: int, check_role: str | None, head_dim: int, device: str) -> dict:
    teacher, student = (info(*s, head_dim=head_dim) for s in shapes)
    print(f"{name}: teacher {teacher.n_layers} layers, {teacher.n_params / 1e9:.2f} B params -> "
          f"student {student.n_layers} layers, {student.n_params / 1e9:.2f} B params", flush=True)
    per_layer = []
    for layer in range(layers):
        rows = {}
        for k, role in enumerate(LAYER_ROLES):
            rows[role] = module_step(tuple(teacher.shapes[role]), tuple(student.shapes[role]), seed=100 * layer + k,
                                     check=layer == 0 and role == check_role, param=teacher.param_name(0, role), device=device)
        per_layer.append(rows)
        total = {key: sum(r[key] for r in rows.values()) for key in ("score_s", "plan_s", "factorise_s")}
        print(f"  layer {layer}: score {total['score_s']:.3f}s  plan {total['plan_s']:.3f}s  "
              f"factorise {total['factorise_s']:.3f}s  (peak RSS {peak_rss_gib():.1f} GiB)", flush=True)
    embeddings = {}
    for k, role in enumerate(EMBED_ROLES):  # embed_tokens works on the transpose [d, V]
        t_shape, s_shape = tuple(teacher.shapes[role]), tuple(student.shapes[role])
        if role == "embed_tokens":
            t_shape, s_shape = t_shape[::-1], s_shape[::-1]
        embeddings[role] = module_step(t_shape, s_shape, seed=10_000 + k, check=False, device=device)
        print(f"  {role} {list(t_shape)} -> {list(s_shape)}: plan {embeddings[role]['plan_s']:.3f}s  "
              f"factorise {embeddings[role]['factorise_s']:.3f}s  (peak RSS {peak_rss_gib():.1f} GiB)", flush=True)

    def mean_layer(key):
        return sum(sum(r[key] for r in rows.values()) for rows in per_layer) / len(per_layer)

    projected = {"layer_scores_s": teacher.n_layers * mean_layer("score_s"),
                 "plan_s": student.n_layers * mean_layer("plan_s") + sum(e["plan_s"] for e in embeddings.values()),
                 "factorise_s": student.n_layers * mean_layer("factorise_s")
                 + sum(e["factorise_s"] for e in embeddings.values())}
    projected["total_s"] = sum(projected.values())
    print(f"  projected for the whole model: layer scores {projected['layer_scores_s']:.1f}s + plan "
          f"{projected['plan_s']:.1f}s + factorise {projected['factorise_s']:.1f}s = {projected['total_s']:.1f}s "
          f"({projected['total_s'] / 60:.1f} min)", flush=True)
    check = next((rows[check_role]["check"] for rows in per_layer[:1] if check_role and "check" in rows[check_role]),
                 None)
    if check:
        err = check["relative_error"]
        print(f"  {check_role} (layer 0) rank-{RANK} relative error: exact {err['exact']:.6f}, randomized "
              f"{err['randomized']:.6f} ({check['error_excess'] * 100:+.4f} %; exact SVD took {check['exact_s']:.1f}s)")
    return {"teacher": teacher.to_dict(), "student": student.to_dict(), "layers_measured": per_layer,
            "embeddings": embeddings, "projected": projected, "check": check, "peak_rss_gib": peak_rss_gib()}


def main():
    ap = scale_parser("tiny shapes of the same structure (for the test suite)")
    ap.add_argument("--pairs", default=",".join(PAIRS), help=f"comma list of {', '.join(PAIRS)}")
    ap.add_argument("--layers", type=int, default=1, help="student layers to measure (the rest are projected)")
    ap.add_argument("--check-role", default="q_proj", help="module whose randomized SVD is checked against the exact")
    ap.add_argument("--no-check", action="store_true", help="skip the exact-SVD check (minutes at full size)")
    ap.add_argument("--device", default="cpu", help="where the teacher weights live and factorise runs (cpu | cuda)")
    args = parse_scale_args(ap)
    table, head_dim = (SMOKE_PAIRS, 16) if args.smoke else (PAIRS, 128)
    names = [n.strip() for n in args.pairs.split(",") if n.strip()]
    unknown = [n for n in names if n not in table]
    if unknown or args.check_role not in LAYER_ROLES:
        ap.error(f"unknown pair {unknown} (use {', '.join(table)}) or check role (use {', '.join(LAYER_ROLES)})")
    device_name = "cpu"
    if args.device.startswith("cuda"):
        device_name = torch.cuda.get_device_name(args.device)
        factorise(torch.randn(2048, 2048, device=args.device), RANK, ALPHA)  # CUDA, cuBLAS and cuSOLVER start-up
        factorise(torch.randn(256, 256, device=args.device), RANK, ALPHA, svd="exact")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, rank {RANK}, svd auto, factorise on {device_name}\n")
    results = {name: run_pair(name, table[name], args.layers, None if args.no_check else args.check_role, head_dim,
                              args.device) for name in names}
    if "llama2-13b-7b" in results:
        total = results["llama2-13b-7b"]["projected"]["total_s"]
        print(f"\n13B -> 7B plan + factorise projected {total / 60:.1f} min (target <= 5 min): "
              f"{'PASS' if total <= 300 else 'FAIL'}; peak RSS {peak_rss_gib():.1f} GiB")
    if args.out:
        write_figures(args.out, {"smoke": args.smoke, "threads": torch.get_num_threads(), "rank": RANK,
                                 "device": args.device, "device_name": device_name, "pairs": results})


if __name__ == "__main__":
    main()
