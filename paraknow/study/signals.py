"""Cheap signals of a PKT export, computed before training, to learn which ones predict the outcome.

Per export (averaged over the modules that receive teacher parameters):
  captured        share of the teacher matrix's sensitivity inside the selection
  area            share of the teacher matrix the selection covers (what a random block captures)
  lift            captured / area (1 = no better than a random block of the same size)
  energy          share of the extracted matrix's squared singular values kept at rank r
  cos_w           cosine of the initial delta s*B@A with the student's weight W
  cos_residual    cosine of s*B@A with W - s*B@A (Neural Incompatibility's parametric alignment)
  zero_step_loss  change of the student's mean completion loss on (up to) ZERO_STEP_RECORDS
                  validation records when the delta is added (additive mode), before any step
and, beside them, `seed_warning`: the degenerate-seeds warning of the map behind the export (its seed
losses, paraknow.transfer.seeds) with the numbers, or None.
"""
from __future__ import annotations

from pathlib import Path

import torch

SIGNALS = ("captured", "area", "lift", "energy", "cos_w", "cos_residual", "zero_step_loss")
SIGNAL_LABELS = {"captured": "captured", "area": "area", "lift": "lift", "energy": "energy at rank r",
                 "cos_w": "cos(s·BA, W)", "cos_residual": "cos(s·BA, W − s·BA)",
                 "zero_step_loss": "loss change at step 0"}  # the column names people read
ZERO_STEP_RECORDS = 64


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denom = float(a.norm() * b.norm())
    return float((a * b).sum()) / denom if denom > 0 else 0.0


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _deltas(export_dir: Path, manifest: dict) -> dict[str, torch.Tensor]:
    """{student parameter name: s * B @ A} of the modules that received teacher parameters, in
    the parameter's own orientation ([out, in]; embeddings [V, d])."""
    from ..transfer.lora import read_adapter

    config, factors, _ = read_adapter(export_dir)
    s = config["lora_alpha"] / config["r"]
    out = {}
    for module, info in manifest["modules"].items():
        A, B = factors[module]
        delta = s * (B.double() @ A.double())  # [out, in]; an embedding's is [d, V]
        out[f"{module}.weight"] = delta.T if info.get("transposed") else delta
    return out


def seed_warning(manifest: dict) -> str | None:
    """The degenerate-seeds warning of the teacher's seed losses an export records (None: fine, or not kept)."""
    from ..transfer.seeds import check_seeds

    losses = manifest.get("seed_losses")
    return check_seeds(losses).message() if losses else None


def export_signals(export_dir, student_model, tokenizer=None, val_records=None) -> dict:
    """The signals of one export for one loaded student (left unchanged on return)."""
    from ..runs.evaluate import completion_losses
    from ..transfer.lora import load_manifest

    export_dir = Path(export_dir)
    manifest = load_manifest(export_dir)
    modules = manifest["modules"].values()
    areas = [(m["shape"][0] * m["shape"][1]) / (m["teacher_shape"][0] * m["teacher_shape"][1]) for m in modules]
    captured = [m["captured"] for m in modules]
    params = dict(student_model.named_parameters())
    deltas = _deltas(export_dir, manifest)
    cos_w, cos_res = [], []
    for name, delta in deltas.items():
        weight = params[name].detach().double().cpu()
        cos_w.append(_cosine(delta, weight))
        cos_res.append(_cosine(delta, weight - delta))
    signals = {"captured": _mean(captured), "area": _mean(areas),
               "lift": _mean(c / a for c, a in zip(captured, areas) if a > 0),
               "energy": _mean(m["energy"] for m in modules), "cos_w": _mean(cos_w),
               "cos_residual": _mean(cos_res), "zero_step_loss": None, "seed_warning": seed_warning(manifest)}
    if tokenizer is not None and val_records:
        records = val_records[:ZERO_STEP_RECORDS]
        before = _mean(completion_losses(student_model, tokenizer, records))
        originals = {name: params[name].detach().clone() for name in deltas}
        try:
            with torch.no_grad():
                for name, delta in deltas.items():
                    params[name].add_(delta.to(params[name].dtype).to(params[name].device))
            after = _mean(completion_losses(student_model, tokenizer, records))
        finally:
            with torch.no_grad():
                for name, original in originals.items():
                    params[name].copy_(original)
        signals["zero_step_loss"] = after - before
    return signals
