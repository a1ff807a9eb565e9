"""The real pair end to end on this machine: Qwen2.5-Coder-1.5B-Instruct -> 0.5B-Instruct (docs/real-pair.md),
the steps of `paraknow extract --dtype bfloat16` one by one with their time and peak memory.

    python bench/bench_real_pair.py --data GSM8K-seeds.jsonl --samples 4 --out docs/results/real_pair.json
    python bench/bench_real_pair.py --smoke          (the demo pair, seconds; no qwen extra needed)

Records: de-quantise time and peak RSS of each model (with --dequantise: converted again in a temporary
cache, in a child process), load time, the sensitivity pass (time per seed, the first seed against one plain forward+backward of the
same seed, peak RSS against the bf16 teacher's size and the float32 sums' size), plan, student load and
factorise + export time, export size, and the step-0 check (the residual export loaded with plain PEFT
leaves the student's logits unchanged). Peak RSS is sampled every 20 ms per step, both resident in all and
anonymous (RssAnon: what the process allocated, without the pages of memory-mapped model files, which the
kernel can drop); the process's own maximum (ru_maxrss) is recorded too; the thread count and the load
average say how busy the machine was. The steps are `extract_to_dir`'s own calls in its order: the student
is described weightless, and its weights load once the plan has freed the map. With --images DIR, the
teacher's sensitivity by layer and module and the layer mapping are drawn as the app draws them
(paraknow.viz) into DIR/sensitivity.png and DIR/mapping.png, after every step is timed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from common import write_figures

from paraknow.core.models import quiet_transformers

TEACHER = "bundled:qwen2.5-coder-1.5b-instruct"
STUDENT = "bundled:qwen2.5-coder-0.5b-instruct"
GiB = 2**30


def anonymous_rss() -> int:
    """This process's anonymous resident bytes (RssAnon in /proc/self/status; 0 where there is none)."""
    with open("/proc/self/status") as fh:
        return next((int(line.split()[1]) * 1024 for line in fh if line.startswith("RssAnon:")), 0)


class Phases:
    """Wall time and sampled peak RSS of each named step."""

    def __init__(self):
        self.proc = psutil.Process()
        self.current, self.peaks, self.anon_peaks, self.times, self.start = None, {}, {}, {}, None
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while True:
            if self.current:
                rss = self.proc.memory_info().rss
                self.peaks[self.current] = max(self.peaks.get(self.current, 0), rss)
                self.anon_peaks[self.current] = max(self.anon_peaks.get(self.current, 0), anonymous_rss())
            time.sleep(0.02)

    def step(self, name: str | None):
        now = time.perf_counter()
        if self.current:
            self.times[self.current] = now - self.start
            print(f"  {self.current:<18} {self.times[self.current]:8.1f} s   peak RSS "
                  f"{self.peaks.get(self.current, 0) / GiB:6.2f} GiB, anonymous "
                  f"{self.anon_peaks.get(self.current, 0) / GiB:6.2f} GiB", flush=True)
        self.current, self.start = name, now
        if name:
            self.peaks[name] = self.proc.memory_info().rss

    def figures(self) -> dict:
        return {name: {"seconds": round(self.times[name], 2), "peak_rss_gib": round(self.peaks[name] / GiB, 3),
                       "peak_anonymous_gib": round(self.anon_peaks.get(name, 0) / GiB, 3)}
                for name in self.times}


def dequantise(ref: str) -> dict:
    """Convert `ref` again in a fresh temporary cache, in a child process: wall time and its peak RSS."""
    with tempfile.TemporaryDirectory() as cache:
        code = ("import torch, sys; from paraknow.core.models import quiet_transformers; quiet_transformers(); "
                "from paraknow.core.models import resolve_ref; resolve_ref(sys.argv[1])")
        t0 = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", code, ref], env={**os.environ, "PARAKNOW_CACHE": cache})
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"de-quantising {ref} failed (status {status})")
    return {"seconds": round(seconds, 1), "peak_rss_gib": round(usage.ru_maxrss * 1024 / GiB, 3)}


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", help="seed records (JSONL, GSM8K in the messages format)")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--dequantise", action="store_true",
                        help="also time the de-quantisation of both models (again, in a temporary cache)")
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--smoke", action="store_true", help="the demo pair and 2 samples (seconds)")
    parser.add_argument("--images", default=None,
                        help="also draw the sensitivity heatmap and the layer mapping as PNGs into this folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_transformers()

    from paraknow.core.architecture import describe
    from paraknow.core.compatibility import check_transferable
    from paraknow.core.data import collate, encode_all, load_records
    from paraknow.core.models import describe_unloaded, load_model
    from paraknow.core.numerics import float32_matmuls
    from paraknow.transfer.export import verify_export
    from paraknow.transfer.mapping import layer_scores
    from paraknow.transfer.pipeline import plan_and_export
    from paraknow.transfer.plan import TransferConfig
    from paraknow.transfer.sensitivity import SensitivityConfig, compute_sensitivity
    from paraknow.transfer.sensitivity_files import provenance
    from paraknow.transfer.sensitivity_map import module_table

    teacher_ref, student_ref = ("demo:teacher", "demo:student") if args.smoke else (TEACHER, STUDENT)
    data = "task:arith:seed" if args.smoke else args.data
    if not data:
        parser.error("--data is required (seed records as JSONL), or --smoke")
    samples = 2 if args.smoke else args.samples
    figures = {"teacher": teacher_ref, "student": student_ref, "data": data, "samples": samples,
               "dtype": "bfloat16", "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
               "load_average_start": list(os.getloadavg())}
    if args.dequantise and not args.smoke:
        figures["dequantise"] = {ref: dequantise(ref) for ref in (teacher_ref, student_ref)}
        print(f"de-quantise: {json.dumps(figures['dequantise'])}", flush=True)

    records = load_records(data)
    sens = SensitivityConfig(samples=samples)
    config = TransferConfig()  # the defaults: attention, FFN and embeddings (same tokenizer), residual mode
    phases = Phases()
    phases.step("load teacher")
    teacher, teacher_tok = load_model(teacher_ref, dtype="bfloat16")
    phases.step("describe student")  # a weightless instance: its weights load after the map is freed
    s_info, student_tok = describe_unloaded(student_ref)
    t_info = describe(teacher, teacher_tok)
    check_transferable(t_info, s_info, config)
    phases.step("forward+backward")  # the sensitivity's unit of work, plainly: one seed, no hooks, no sums
    first = collate(encode_all(teacher_tok, records[:1], sens.max_length), pad_id=0)
    with float32_matmuls(teacher):
        teacher(**first).loss.backward()
    teacher.zero_grad(set_to_none=True)
    phases.step("sensitivity")
    sample_ends, sensitivity_start = [], time.perf_counter()  # perf_counter at the end of each seed's backward
    scores = compute_sensitivity(teacher, teacher_tok, records, sens,
                                 progress=lambda i, n, message: sample_ends.append(time.perf_counter()))
    phases.step(None)  # the drawing's inputs: a few numbers per layer and module, not part of any step
    table, per_layer = module_table(scores), layer_scores(scores, t_info.n_layers)
    phases.step("plan")
    loaded = {}

    def student():  # plan_and_export asks for it once the map is freed, as extract_to_dir does
        phases.step("load student")
        loaded["model"], loaded["tokenizer"] = load_model(student_ref)
        phases.step("factorise + export")
        return loaded["model"]

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "export"
        manifest = plan_and_export(teacher, student, t_info, s_info, scores, config, out,
                                   provenance(teacher_ref, student_ref, data, sens, records))
        del scores
        phases.step(None)
        export_bytes = directory_bytes(out)
        del teacher
        phases.step("verify")
        check = verify_export(loaded["model"], loaded["tokenizer"], out, records[:samples])
        phases.step(None)
    seed_seconds = [b - a for a, b in zip([sensitivity_start] + sample_ends, sample_ends)]
    bf16_teacher = t_info.n_params * 2
    figures.update({
        "steps": phases.figures(),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB, 3),
        "peak_anonymous_gib": round(max(phases.anon_peaks.values()) / GiB, 3),
        "teacher_params": t_info.n_params, "student_params": s_info.n_params,
        "teacher_bf16_gib": round(bf16_teacher / GiB, 3), "sums_float32_gib": round(2 * bf16_teacher / GiB, 3),
        "student_float32_gib": round(s_info.n_params * 4 / GiB, 3),
        "sensitivity_peak_vs_bf16_teacher": round(phases.peaks["sensitivity"] / bf16_teacher, 2),
        "sensitivity_seed_seconds": [round(t, 1) for t in seed_seconds],
        "first_seed_vs_plain_forward_backward": round(seed_seconds[0] / phases.times["forward+backward"], 2),
        "layer_map": manifest["layer_map"], "modules": len(manifest["modules"]),
        "export_mib": round(export_bytes / 2**20, 1), "step0_check": check.to_dict(),
        "step0_relative_change": check.max_change / max(1.0, check.max_logit),
        "load_average_end": list(os.getloadavg()),
    })
    print(f"peak RSS {figures['peak_rss_gib']} GiB (bf16 teacher {figures['teacher_bf16_gib']} + float32 sums "
          f"{figures['sums_float32_gib']} + student {figures['student_float32_gib']} GiB); layer map "
          f"{manifest['layer_map']}; export {figures['export_mib']} MiB; step 0 unchanged: {check.unchanged} "
          f"(max change {check.max_change:.2e}, relative {figures['step0_relative_change']:.2e})")
    if args.images:
        draw(Path(args.images), table, manifest["layer_map"], per_layer,
             f"{teacher_ref} on {samples} seeds of {Path(data).name}")
    if args.out:
        write_figures(args.out, figures)


def draw(folder: Path, table: list[dict], layer_map: list, per_layer: list[float], what: str) -> None:
    """The sensitivity heatmap and the layer mapping, as the Sensitivity and Mapping pages draw them."""
    from paraknow.core.fsio import atomic_write_bytes
    from paraknow.htmlreport import figure_image
    from paraknow.viz.mapping import mapping_diagram
    from paraknow.viz.sensitivity import sensitivity_heatmap

    folder.mkdir(parents=True, exist_ok=True)
    images = {"sensitivity.png": sensitivity_heatmap(table, title=f"Sensitivity of {what} (sum, taylor-abs)"),
              "mapping.png": mapping_diagram(layer_map, len(per_layer), per_layer)}
    for name, figure in images.items():
        atomic_write_bytes(folder / name, figure_image(figure))
        print(f"wrote {folder / name}")


if __name__ == "__main__":
    main()
