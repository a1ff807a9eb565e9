"""The steps before training: load, sensitivity, where it sits, layer choice, structure, export.

Each takes the `Lesson` and returns a `StepResult` whose note is written from its own numbers.
"""
from __future__ import annotations

import torch

from ..core.errors import ParaknowError
from ..extract import STRUCTURE_HELP
from .figures import parameters_figure, structure_figure
from .state import GROUP_NAMES, Lesson, Question, StepResult, pct, times


def _parameter_parts(model) -> dict[str, float]:
    """Parameters per group (attention, FFN, embeddings, other), grouped as the sensitivity is."""
    from ..transfer.sensitivity_map import group_shares

    counts = {name: torch.tensor(float(p.numel())) for name, p in model.named_parameters()}
    total = sum(float(c) for c in counts.values())
    return {group: share * total for group, share in group_shares(counts).items()}


def step_load(lesson: Lesson) -> StepResult:
    m = lesson.models()
    t, s = m["t_info"], m["s_info"]
    parts = {f"teacher ({lesson.config.teacher})": _parameter_parts(m["teacher"]),
             f"student ({lesson.config.student})": _parameter_parts(m["student"])}
    table = [{"model": ref, "layers": str(info.n_layers), "hidden size": str(info.hidden_size),
              "FFN size": str(info.intermediate_size),
              "heads (query / key-value)": f"{info.n_heads} / {info.n_kv_heads}",
              "parameters": f"{info.n_params / 1e6:.2f} M", "vocabulary": str(info.vocab_size)}
             for ref, info in ((lesson.config.teacher, t), (lesson.config.student, s))]
    same_vocab = bool(t.vocab_hash) and t.vocab_hash == s.vocab_hash
    ratio = t.n_params / s.n_params
    note = (f"The teacher has {t.n_params / 1e6:.2f} M parameters, {times(ratio)} the student's "
            f"{s.n_params / 1e6:.2f} M, and {t.n_layers} layers to the student's {s.n_layers}: "
            + (f"only {s.n_layers} of the teacher's {t.n_layers} layers can each give one student layer its weights. "
               if t.n_layers > s.n_layers else
               f"every teacher layer can give one student layer its weights. ")
            + ("Both use the same tokenizer, so the embeddings can transfer too."
               if same_vocab else "Their tokenizers differ, so the embeddings stay out of the transfer."))
    return StepResult([("Parameters by part", parameters_figure(parts))], table, note,
                      {"teacher_params": t.n_params, "student_params": s.n_params, "ratio": ratio,
                       "teacher_layers": t.n_layers, "student_layers": s.n_layers, "same_vocab": same_vocab})


def _matrix_shares(scores: dict) -> list[dict]:
    """`module_table` rows with each matrix's share of the decoder layers' total sensitivity."""
    from ..transfer.sensitivity_map import module_table

    rows = module_table(scores)
    total = sum(r["sum"] for r in rows) or 1.0
    return [{**r, "share": r["sum"] / total} for r in rows]


def step_sensitivity(lesson: Lesson) -> StepResult:
    from ..viz import sensitivity_heatmap

    scores, meta, records = lesson.sensitivity()
    rows = _matrix_shares(scores)
    ranked = sorted(rows, key=lambda r: -r["share"])
    top, low = ranked[0], ranked[-1]
    even = 1 / len(rows)
    table = [{"rank": str(i + 1), "layer": str(r["layer"]), "matrix": r["module"], "share": pct(r["share"])}
             for i, r in enumerate(ranked[:5])]
    note = (f"The most sensitive matrix is layer {top['layer']}'s {top['module']}, with {pct(top['share'])} of the "
            f"sensitivity in the decoder layers: {times(top['share'] / even)} an even share of the {len(rows)} "
            f"matrices ({pct(even)}). The least is layer {low['layer']}'s {low['module']} with "
            f"{pct(low['share'], 2)}. The five shown hold {pct(sum(r['share'] for r in ranked[:5]))} together.")
    figure = sensitivity_heatmap(rows, title=f"Sensitivity of the teacher on {lesson.seed_ref} "
                                             f"({len(records)} samples, {meta.get('metric')})")
    return StepResult([("Sensitivity by layer and matrix", figure)], table, note,
                      {"top_layer": top["layer"], "top_module": top["module"], "top_share": top["share"],
                       "low_layer": low["layer"], "low_module": low["module"], "low_share": low["share"],
                       "n_matrices": len(rows), "top5_share": sum(r["share"] for r in ranked[:5])})


WHERE_QUESTION = Question("Which part of the teacher holds the largest share of the sensitivity?",
                          {g: GROUP_NAMES[g] for g in ("attention", "ffn", "embeddings")}, "largest")


def step_where(lesson: Lesson) -> StepResult:
    from ..transfer.sensitivity_map import group_shares
    from ..viz import group_share_figure

    scores = lesson.sensitivity()[0]
    shares = group_shares(scores)
    params = _parameter_parts(lesson.models()["teacher"])
    n_params = sum(params.values())
    largest = max(shares, key=shares.get)
    roles = {}
    for r in _matrix_shares(scores):
        roles[r["module"]] = roles.get(r["module"], 0.0) + r["sum"]
    total = sum(float(s.double().sum()) for s in scores.values()) or 1.0
    table = [{"part": GROUP_NAMES[g], "sensitivity share": pct(shares[g]), "parameter share": pct(params[g] / n_params),
              "per parameter vs. average": times(shares[g] / (params[g] / n_params)) if params[g] else "–"}
             for g in shares]
    role = max(roles, key=roles.get)
    role_share = roles[role] / total
    densities = {g: shares[g] / (params[g] / n_params) for g in shares if params[g]}
    densest = max(densities, key=densities.get)
    name = GROUP_NAMES[largest]
    note = (f"{name[0].upper() + name[1:]} holds the largest share, {pct(shares[largest])} of the sensitivity, "
            f"with {pct(params[largest] / n_params)} of the parameters: {times(densities[largest])} the average per "
            f"parameter. Per parameter the densest part is {GROUP_NAMES[densest]} ({times(densities[densest])}). "
            f"Summed over the layers, the most sensitive kind of matrix is {role} "
            f"({pct(role_share)} of all the sensitivity).")
    return StepResult([("Where the sensitivity sits", group_share_figure(shares))], table, note,
                      {"shares": shares, "largest": largest, "densities": densities, "densest": densest, "role": role,
                       "role_share": role_share})


def step_layers(lesson: Lesson) -> StepResult:
    from ..transfer.mapping import map_layers
    from ..viz import layer_bars, mapping_diagram

    plan = lesson.plan()
    m = lesson.models()
    scores = plan.layer_scores
    total = sum(scores) or 1.0
    chosen = [t for t in plan.layer_map if t is not None]
    evenly = map_layers("uniform", m["t_info"].n_layers, m["s_info"].n_layers)
    top = max(range(len(scores)), key=lambda i: (scores[i], -i))
    chosen_share = sum(scores[i] for i in set(chosen)) / total
    even_share = sum(scores[i] for i in set(evenly)) / total
    students = {t: j for j, t in enumerate(plan.layer_map) if t is not None}
    table = [{"teacher layer": str(i), "share": pct(s / total),
              "student layer": str(students[i]) if i in students else "–"} for i, s in enumerate(scores)]
    compare = ("more than" if chosen_share > even_share else
               "the same as" if chosen_share == even_share else "less than")
    note = (f"Teacher layer {top} holds the largest share, {pct(scores[top] / total)}. The layer map keeps "
            f"{len(chosen)} layers, {', '.join(map(str, chosen))}, in their order: together {pct(chosen_share)} of "
            f"the layer sensitivity, {compare} the {pct(even_share)} of {len(evenly)} evenly spaced layers "
            f"({', '.join(map(str, evenly))}).")
    figures = [("Layer scores", layer_bars(scores, highlight=chosen)),
               ("Layer map", mapping_diagram(plan.layer_map, m["t_info"].n_layers, scores))]
    return StepResult(figures, table, note, {"top_layer": top, "top_share": scores[top] / total, "chosen": chosen,
                                             "chosen_share": chosen_share, "evenly": evenly,
                                             "even_share": even_share})


STRUCTURE_QUESTION = Question(
    "Each teacher matrix gives the student a part of the student's size. Which way of choosing that part "
    "captures the most of the matrix's sensitivity?",
    {s: f"{s}: {help_}" for s, help_ in STRUCTURE_HELP.items()}, "best")


def structure_rows(lesson: Lesson) -> list[dict]:
    """Per registry structure: mean / min captured share over the planned matrices, entries taken."""
    from ..extract import STRUCTURES

    rows = []
    for structure in STRUCTURES:
        try:
            mods = lesson.plan(structure).modules
        except ParaknowError:  # a structure this pair cannot use (e.g. heads on incompatible head counts)
            continue
        captured = [m.captured for m in mods]
        rows.append({"structure": structure, "captured": sum(captured) / len(captured), "min": min(captured),
                     "area": sum(m.area for m in mods) / len(mods), "n": len(mods)})
    return rows


def step_structure(lesson: Lesson) -> StepResult:
    rows = structure_rows(lesson)
    by = {r["structure"]: r for r in rows}
    sub, rnd = by["submatrix"], by["random"]
    best = max(rows, key=lambda r: r["captured"])
    table = [{"structure": r["structure"], "what it takes": STRUCTURE_HELP.get(r["structure"], ""),
              "captured (mean)": pct(r["captured"]), "captured (least)": pct(r["min"]), "entries taken": pct(r["area"]),
              "vs. random": times(r["captured"] / rnd["captured"]) if rnd["captured"] else "–"} for r in rows]
    ratio = sub["captured"] / rnd["captured"] if rnd["captured"] else float("inf")
    note = (f"Over the {sub['n']} matrices that move, the submatrix (the default) captures on average "
            f"{pct(sub['captured'])} of each matrix's sensitivity while taking {pct(sub['area'])} of its entries; "
            f"random rows and columns of the same size capture {pct(rnd['captured'])}, so the submatrix captures "
            f"{times(ratio)} as much: {how_much(ratio)}. The structure that captures the most is {best['structure']} "
            f"({pct(best['captured'])})"
            + (", which is the submatrix itself." if best["structure"] == "submatrix" else
               f", {times(best['captured'] / sub['captured'])} the submatrix, but its parts are scattered "
               "entries or rows that no longer form a contiguous block of the teacher's matrix."
               if best["structure"] in ("elements", "rowcol") else "."))
    return StepResult([("Captured share by structure", structure_figure(rows))], table, note,
                      {"submatrix": sub["captured"], "random": rnd["captured"], "area": sub["area"], "ratio": ratio,
                       "best": best["structure"], "best_captured": best["captured"], "n": sub["n"]})


def step_export(lesson: Lesson) -> StepResult:
    from ..viz import energy_figure, spectrum_figure

    manifest = lesson.export()
    mods = manifest["modules"]
    energies = {name: mod["energy"] for name, mod in mods.items()}
    mean = sum(energies.values()) / len(energies)
    least = min(energies, key=energies.get)
    size = sum(p.stat().st_size for p in lesson.export_dir().rglob("*") if p.is_file())
    table = [{"module": name, "teacher matrix": mod["teacher_param"], "block": "x".join(map(str, mod["shape"])),
              "energy at rank r": pct(mod["energy"]), "captured": pct(mod["captured"])} for name, mod in mods.items()]
    note = (f"At rank {manifest['rank']} the LoRA factors keep on average {pct(mean)} of the extracted blocks' "
            f"energy (the squared singular values up to r over all of them); the least is kept for {least} "
            f"({pct(energies[least])}). The export `{lesson.export_name()}` holds {len(mods)} modules in "
            f"{size / 1e6:.2f} MB, in {manifest['mode']} mode: "
            + ("the student's base weights are lowered by the same amount, so at step 0 it computes exactly what "
               "it did before." if manifest["mode"] == "residual" else "the factors are added to the student."))
    figures = [("Energy and captured share per module", energy_figure(manifest)),
               ("Singular-value spectra", spectrum_figure(manifest))]
    return StepResult(figures, table, note, {"rank": manifest["rank"], "mean_energy": mean, "least": least,
                                             "least_energy": energies[least], "modules": len(mods),
                                             "mode": manifest["mode"], "bytes": size})


def how_much(ratio: float) -> str:
    """A ratio of two captured shares in words."""
    if ratio >= 1.5:
        return "clearly more"
    if ratio >= 1.05:
        return "more, but not by much"
    if ratio > 0.95:
        return "about the same"
    return "less"


def loss_change(first: float, last: float) -> str:
    if last < first:
        return f"fell by {pct((first - last) / first, 0)}"
    if last > first:
        return f"rose by {pct((last - first) / first, 0)}"
    return "stayed the same"
