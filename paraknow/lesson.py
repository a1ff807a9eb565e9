"""The Lesson: a guided walk through parametric knowledge transfer on the demo pair (docs/lesson.md).

Nine steps, each running the real computation through the library and returning a `StepResult`:
the charts (paraknow.viz builders where one exists), a table of the numbers the step shows, and a
"what to notice" note written from those numbers -- never a canned sentence, so when the data say
the opposite of what one expects, the note says the opposite too.

    load -> sensitivity -> where -> layers -> structure -> export -> finetune -> compare -> recap

State lives in a `Lesson` (models, the sensitivity map, the plan, the export, the run). Everything
slow is cached on disk by content (the sensitivity map, the export, the fine-tuning run), so a new
Lesson on the same settings finds them again; fine-tuning runs as a background job
(`paraknow.jobs`) and survives a reload. Used by pages/9_Lesson.py; no streamlit here.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import plotly.graph_objects as go
import torch

from .errors import ParaknowError
from .models import ATTN_ROLES, FFN_ROLES

GROUP_NAMES = {"attention": "attention", "ffn": "FFN", "embeddings": "embeddings", "other": "norms"}
STRUCTURE_NAMES = {  # registry structure -> how the lesson calls it
    "submatrix": "submatrix (the best contiguous block)",
    "rowcol": "rows + columns (the most sensitive of each)",
    "elements": "single entries (the most sensitive ones)",
    "random": "random rows + columns (a random block of the same size)",
    "uniform": "evenly spaced rows + columns",
    "heads": "whole attention heads and FFN neurons",
}
RUN_GROUP_PREFIX = "lesson-"
PRESENTATION_SCALE = 1.5  # fonts and chart heights in presentation mode


def pct(share: float, digits: int = 1) -> str:
    """0.1234 -> '12.3 %' (the one number format of every note and table)."""
    return f"{100 * share:.{digits}f} %"


def times(ratio: float) -> str:
    """2.345 -> '2.35×' (ratios near 1 keep their difference visible)."""
    return f"{ratio:.2f}×"


@dataclass
class LessonConfig:
    """The lesson's settings. The pipeline settings themselves are the library's defaults
    (SensitivityConfig, TransferConfig); only the fine-tuning is shortened to fit a lesson."""
    teacher: str = "demo:teacher"
    student: str = "demo:student"
    task: str = "arith"  # seed data task:<task>:seed, training task:<task>:train, questions task:<task>:test
    test_item: int = 0  # the test question the compare step asks
    loss_items: int = 16  # test items whose mean reference loss the compare step reports
    max_new_tokens: int = 64
    epochs: float = 1.0  # a short run: 1000 train samples / batch 32 = 32 optimizer steps
    lr: float = 1e-3
    batch: int = 32
    micro_batch: int = 8
    eval_items: int = 16  # the run evaluates on the first N test items ...
    eval_every: int = 16  # ... every N optimizer steps (and at the end)
    seed: int = 0


@dataclass
class StepResult:
    """What one step shows: charts, one table of its numbers, and the note computed from them."""
    figures: list  # [(title, plotly Figure)]
    table: list[dict]  # rows of preformatted strings: exactly what the page prints
    note: str  # "what to notice", written from `facts`
    facts: dict = field(default_factory=dict)  # the numbers behind the note (named, unformatted)
    extra: dict = field(default_factory=dict)  # step-specific data for the page (answers, run state)


@dataclass
class Question:
    """A "predict first" question: the options and the fact of the result that holds the answer."""
    prompt: str
    options: dict  # option key -> label
    answer_fact: str  # StepResult.facts key holding the right option's key


@dataclass
class Step:
    key: str
    title: str
    formula: str  # markdown (with $...$ LaTeX): the formula in play
    run: Callable  # (Lesson) -> StepResult | None (None: a background job is still running)
    question: Question | None = None
    background: bool = False  # the step starts a background job instead of computing inline


# ---------------------------------------------------------------------------------------
# The lesson's state


Loader = Callable[[str], tuple]  # model reference -> (model, tokenizer)


def default_loader(ref: str) -> tuple:
    from .models import load_model

    model, tokenizer = load_model(ref, device="cpu")
    return model.eval(), tokenizer


class Lesson:
    """Everything computed so far, step by step (each step computes what it needs first)."""

    def __init__(self, config: LessonConfig | None = None, loader: Loader = default_loader):
        self.config = config or LessonConfig()
        self.loader = loader
        self.results: dict[str, StepResult] = {}
        self.predictions: dict[str, str] = {}  # step key -> the option the class predicted
        self._models: dict | None = None
        self._sensitivity: tuple | None = None
        self._plans: dict = {}

    # ---- inputs that several steps share ------------------------------------------------
    def models(self) -> dict:
        """{'teacher', 't_tok', 't_info', 'student', 's_tok', 's_info'}, loaded once."""
        if self._models is None:
            from .models import describe

            teacher, t_tok = self.loader(self.config.teacher)
            student, s_tok = self.loader(self.config.student)
            self._models = {"teacher": teacher, "t_tok": t_tok, "t_info": describe(teacher, t_tok),
                            "student": student, "s_tok": s_tok, "s_info": describe(student, s_tok)}
        return self._models

    @property
    def seed_ref(self) -> str:
        return f"task:{self.config.task}:seed"

    def sensitivity(self) -> tuple[dict, dict, list]:
        """(scores, metadata, seed records used): cached on disk by content (`cached_sensitivity`)."""
        if self._sensitivity is None:
            from .data import load_records
            from .sensitivity import SensitivityConfig, cached_sensitivity

            m = self.models()
            config = SensitivityConfig()
            records = load_records(self.seed_ref)[:config.samples]
            scores, meta = cached_sensitivity(m["teacher"], m["t_tok"], records, config, model_ref=self.config.teacher)
            self._sensitivity = (scores, meta, records)
        return self._sensitivity

    def plan(self, structure: str | None = None):
        """The TransferPlan with the library's defaults (`structure` replaces the default one)."""
        from .transfer import TransferConfig, plan_transfer

        config = TransferConfig() if structure is None else TransferConfig(structure=structure)
        if config.structure not in self._plans:
            m = self.models()
            self._plans[config.structure] = plan_transfer(m["t_info"], m["s_info"], self.sensitivity()[0], config)
        return self._plans[config.structure]

    def export_name(self) -> str:
        """Named by what it is made of, so the same lesson finds its export (and run) again."""
        from .transfer import TransferConfig

        meta = self.sensitivity()[1]
        key = json.dumps({"teacher": self.config.teacher, "student": self.config.student,
                          "data": meta.get("data_sha256"), "metric": meta.get("metric"),
                          "transfer": asdict(TransferConfig())}, sort_keys=True, default=str)
        return f"lesson-{self.config.task}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"

    def export_dir(self) -> Path:
        from .paths import cache_dir

        return cache_dir("exports") / self.export_name()

    def export(self) -> dict:
        """The export's manifest: written once (`transfer.export_transfer`), read back afterwards."""
        from .lora import load_manifest
        from .transfer import TransferConfig, export_transfer

        out = self.export_dir()
        if (out / "paraknow.json").is_file():
            return load_manifest(out)
        m = self.models()
        scores, meta, records = self.sensitivity()
        provenance = {"teacher": self.config.teacher, "student": self.config.student, "data": self.seed_ref,
                      "metric": meta.get("metric"), "samples": len(records), "max_length": meta.get("max_length"),
                      "data_sha256": meta.get("data_sha256")}
        try:
            return export_transfer(m["teacher"], m["student"], m["t_info"], m["s_info"], self.plan(),
                                   TransferConfig(), out, provenance)
        except ParaknowError:
            if (out / "paraknow.json").is_file():  # another session wrote it meanwhile
                return load_manifest(out)
            raise

    # ---- the fine-tuning run (a background job) -------------------------------------------
    @property
    def run_group(self) -> str:
        """The lesson's runs: this export, these settings."""
        settings = hashlib.sha256(json.dumps(asdict(self.config), sort_keys=True).encode()).hexdigest()[:8]
        return f"{RUN_GROUP_PREFIX}{self.export_name()}-{settings}"

    def train_config(self):
        from .train import TrainConfig

        c = self.config
        return TrainConfig(student=c.student, data=f"task:{c.task}:train", init=str(self.export_dir()),
                           epochs=c.epochs, lr=c.lr, batch=c.batch, micro_batch=c.micro_batch, seed=c.seed,
                           eval_data=f"task:{c.task}:test", eval_limit=c.eval_items, eval_every=c.eval_every,
                           eval_max_new_tokens=c.max_new_tokens, device="cpu")

    def run(self):
        """The newest run of this lesson that is not failed or stopped (RunInfo), or None."""
        from .jobs import list_runs

        runs = [r for r in list_runs(group=self.run_group) if r.state not in ("failed", "stopped")]
        return max(runs, key=lambda r: r.created or 0) if runs else None

    def start_training(self):
        """Queue the lesson's fine-tuning run (unless one is queued, running or finished) -> RunInfo."""
        from .jobs import run_info, submit

        self.export()
        held = self.run()
        if held is not None:
            return held
        return run_info(submit(self.train_config(), group=self.run_group, label="lesson"))

    def failed_run(self):
        """The newest failed or stopped lesson run (to say why), or None."""
        from .jobs import list_runs

        runs = [r for r in list_runs(group=self.run_group) if r.state in ("failed", "stopped")]
        return max(runs, key=lambda r: r.created or 0) if runs else None


# ---------------------------------------------------------------------------------------
# Figures only the lesson draws (the others are paraknow.viz builders)


def _bars(title: str, height: int = 340, **layout) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=50, b=10), **layout)
    return fig


def parameters_figure(parts: dict[str, dict[str, float]]) -> go.Figure:
    """Parameters (millions) of each model split into attention / FFN / embeddings / norms."""
    fig = _bars("Parameters of each model, by part (millions)", barmode="stack",
                legend=dict(orientation="h", y=-0.15))
    colors = {"attention": "#1e88e5", "ffn": "#fb8c00", "embeddings": "#8e24aa", "other": "#9e9e9e"}
    for group in GROUP_NAMES:
        fig.add_trace(go.Bar(x=list(parts), y=[parts[m][group] / 1e6 for m in parts], name=GROUP_NAMES[group],
                             marker_color=colors[group],
                             hovertemplate=f"%{{x}}: %{{y:.3f}} M {GROUP_NAMES[group]}<extra></extra>"))
    fig.update_yaxes(title="parameters (M)")
    return fig


def structure_figure(rows: list[dict]) -> go.Figure:
    """Mean captured share of each structure (bars) against the share of entries taken (line)."""
    fig = _bars("Share of each teacher matrix's sensitivity captured by a student-sized part",
                legend=dict(orientation="h", y=-0.3))
    names = [r["structure"] for r in rows]
    fig.add_trace(go.Bar(x=names, y=[r["captured"] for r in rows], name="captured (mean over matrices)",
                         marker_color=["#e53935" if r["structure"] == "submatrix" else "#78909c" for r in rows],
                         text=[pct(r["captured"]) for r in rows], textposition="outside",
                         hovertemplate="%{x}: %{y:.1%} captured<extra></extra>"))
    fig.add_trace(go.Scatter(x=names, y=[r["area"] for r in rows], mode="lines+markers", name="entries taken",
                             line=dict(color="#263238", dash="dash"),
                             hovertemplate="%{x}: %{y:.1%} of the entries<extra></extra>"))
    fig.update_yaxes(tickformat=".0%", range=[0, 1.05])
    return fig


def token_loss_figure(outputs: list) -> go.Figure:
    """Per-token cross-entropy of the reference answer under each model (grouped bars)."""
    fig = _bars("Loss of each reference token (nats; lower = the model expects it)", barmode="group",
                legend=dict(orientation="h", y=-0.35))
    for out, color in zip(outputs, ("#757575", "#1e88e5", "#e53935")):
        if not out.losses:
            continue
        fig.add_trace(go.Bar(x=list(range(len(out.losses))), y=[t.loss for t in out.losses], name=out.name,
                             marker_color=color, customdata=[[t.token] for t in out.losses],
                             hovertemplate="token %{x} %{customdata[0]!r}: %{y:.3f} nats<extra></extra>"))
    ticks = [t.token.replace("\n", "⏎") for t in outputs[0].losses] if outputs and outputs[0].losses else []
    fig.update_xaxes(tickvals=list(range(len(ticks))), ticktext=ticks, tickangle=0)
    fig.update_yaxes(title="nats")
    return fig


def presentation(figure: go.Figure, scale: float = PRESENTATION_SCALE) -> go.Figure:
    """A copy of `figure` with fonts and height scaled up, for a projector."""
    fig = go.Figure(figure)
    height = fig.layout.height or 400
    size = int(12 * scale)
    fig.update_layout(height=int(height * scale), font=dict(size=size), title_font=dict(size=int(17 * scale)),
                      legend_font_size=size, hoverlabel_font_size=size)
    fig.update_xaxes(tickfont_size=size, title_font_size=size)  # explicit: the app's chart theme sets its own
    fig.update_yaxes(tickfont_size=size, title_font_size=size)
    fig.update_annotations(font_size=size)
    return fig


# ---------------------------------------------------------------------------------------
# The steps


def _parameter_parts(model) -> dict[str, float]:
    """Parameters per group (attention, FFN, embeddings, other), grouped as the sensitivity is."""
    from .sensitivity import group_shares

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
    from .sensitivity import module_table

    rows = module_table(scores)
    total = sum(r["sum"] for r in rows) or 1.0
    return [{**r, "share": r["sum"] / total} for r in rows]


def step_sensitivity(lesson: Lesson) -> StepResult:
    from .viz import sensitivity_heatmap

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
    figure = sensitivity_heatmap(module_table_of(rows), title=f"Sensitivity of the teacher on {lesson.seed_ref} "
                                                               f"({len(records)} samples, {meta.get('metric')})")
    return StepResult([("Sensitivity by layer and matrix", figure)], table, note,
                      {"top_layer": top["layer"], "top_module": top["module"], "top_share": top["share"],
                       "low_layer": low["layer"], "low_module": low["module"], "low_share": low["share"],
                       "n_matrices": len(rows), "top5_share": sum(r["share"] for r in ranked[:5])})


def module_table_of(rows: list[dict]) -> list[dict]:
    """Share rows back as `module_table` rows (the heatmap's input)."""
    return [{k: v for k, v in r.items() if k != "share"} for r in rows]


WHERE_QUESTION = Question("Which part of the teacher holds the largest share of the sensitivity?",
                          {g: GROUP_NAMES[g] for g in ("attention", "ffn", "embeddings")}, "largest")


def step_where(lesson: Lesson) -> StepResult:
    from .sensitivity import group_shares
    from .viz import group_share_figure

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
    from .mapping import map_layers
    from .viz import layer_bars, mapping_diagram

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
    dict(STRUCTURE_NAMES), "best")


def structure_rows(lesson: Lesson) -> list[dict]:
    """Per registry structure: mean / min captured share over the planned matrices, entries taken."""
    from .extract import STRUCTURES

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
    table = [{"structure": r["structure"], "what it takes": STRUCTURE_NAMES.get(r["structure"], r["structure"]),
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
    from .viz import energy_figure, spectrum_figure

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


def step_finetune(lesson: Lesson) -> StepResult | None:
    """The finished run's curves and note; None while the run is queued or running (or not started)."""
    from .jobs import read_metrics
    from .viz import curve_points, run_curves

    run = lesson.run()
    if run is None or run.state != "finished":
        return None
    rows = read_metrics(run.run_dir)
    steps, losses = curve_points(rows, "loss")
    if not losses:
        raise ParaknowError(f"run {run.run_id} finished without a logged loss; start it again.")
    k = max(1, len(losses) // 4)  # single steps are noisy: compare the first and the last quarter
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    table = [{"run": run.run_id, "init": "PKT export", "data": run.spec.get("data"), "steps": str(steps[-1]),
              f"mean loss, first {k} steps": f"{first:.3f}", f"mean loss, last {k} steps": f"{last:.3f}",
              "lowest loss": f"{min(losses):.3f}"}]
    eval_steps, accuracy = curve_points(rows, "eval_accuracy")
    _, eval_losses = curve_points(rows, "eval_loss")
    note = (f"The training loss, averaged over {k} steps, went from {first:.3f} (steps {steps[0]}–{steps[k - 1]}) to "
            f"{last:.3f} (steps {steps[-k]}–{steps[-1]}): it {loss_change(first, last)}. The lowest single step was "
            f"{min(losses):.3f} (step {steps[losses.index(min(losses))]}).")
    if accuracy:
        table[0].update({f"eval accuracy, step {eval_steps[0]}": pct(accuracy[0]),
                         f"eval accuracy, step {eval_steps[-1]}": pct(accuracy[-1])})
        trend = (f"stayed at {pct(accuracy[0])}" if accuracy[-1] == accuracy[0] else
                 f"{'rose' if accuracy[-1] > accuracy[0] else 'fell'} from {pct(accuracy[0])} to {pct(accuracy[-1])}")
        table[0].update({f"eval loss, step {eval_steps[0]}": f"{eval_losses[0]:.3f}",
                         f"eval loss, step {eval_steps[-1]}": f"{eval_losses[-1]:.3f}"})
        note += (f" On the first {lesson.config.eval_items} test questions the accuracy {trend} between step "
                 f"{eval_steps[0]} and step {eval_steps[-1]}, and their loss "
                 f"{loss_change(eval_losses[0], eval_losses[-1])} "
                 f"({eval_losses[0]:.3f} to {eval_losses[-1]:.3f}).")
    curves = run_curves([{"label": f"PKT, lesson run {run.run_id}", "rows": rows, "color": "#e53935"}])
    return StepResult([("Training curves", curves)], table, note,
                      {"first_loss": first, "last_loss": last, "window": k, "steps": steps[-1], "accuracy": accuracy,
                       "eval_losses": eval_losses,
                       "run_dir": str(run.run_dir)})


def _answer(text: str) -> str:
    """A generation shown in a note: its last non-empty line, shortened."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    answer = lines[-1] if lines else "(nothing)"
    return answer if len(answer) <= 80 else answer[:77] + "…"


def step_compare(lesson: Lesson) -> StepResult:
    import copy

    from .evaluate import completion_losses
    from .lora import attach_adapter
    from .playground import compare_models, task_item
    from .tasks import task_records

    run = lesson.run()
    if run is None or run.state != "finished":
        raise ParaknowError("the fine-tuning run has not finished yet: run the fine-tune step first.")
    c = lesson.config
    m = lesson.models()
    student, tok = m["student"], m["s_tok"]
    with_export = attach_adapter(copy.deepcopy(student), str(lesson.export_dir()), c.student)
    trained = attach_adapter(copy.deepcopy(student), str(run.run_dir / "adapter"), c.student)
    record, prompt, reference = task_item(c.task, c.test_item)
    models = [("student", student, tok), ("student + export (step 0)", with_export, tok),
              ("student + trained adapter", trained, tok)]
    outputs = compare_models(models, prompt, reference, c.max_new_tokens, record)
    items = task_records(c.task, "test")[:c.loss_items]
    mean_losses = [sum(completion_losses(model, tok, items)) / len(items) for _, model, _ in models]
    before, step0, after = outputs
    verdict = lambda o: "right" if o.correct else "wrong"  # noqa: E731
    same_answer = before.text == after.text
    table = [{"model": o.name, "answer": _answer(o.text), "matches the reference": "yes" if o.correct else "no",
              "reference loss, this question": f"{o.mean_loss:.3f}",
              f"reference loss, {len(items)} test items": f"{loss:.3f}"} for o, loss in zip(outputs, mean_losses)]
    note = (f"On test question #{c.test_item} the student answered “{_answer(before.text)}” ({verdict(before)}); "
            f"after fine-tuning from the export it answers “{_answer(after.text)}” ({verdict(after)})"
            + (": the same answer. " if same_answer else ": the answer changed. ")
            + f"The reference answer's loss on this question went from {before.mean_loss:.3f} to "
            f"{after.mean_loss:.3f} nats per token, and over the first {len(items)} test items from "
            f"{mean_losses[0]:.3f} to {mean_losses[2]:.3f} ("
            + ("lower: the trained student expects the right answers more). " if mean_losses[2] < mean_losses[0]
               else "not lower: on these items training did not make the right answers more expected). ")
            + ("Before training, student + export answers exactly as the student does"
               if step0.text == before.text else "Before training, student + export already answers differently")
            + f" (reference loss {step0.mean_loss:.3f} vs {before.mean_loss:.3f}).")
    return StepResult([("Reference loss per token", token_loss_figure(outputs))], table, note,
                      {"before": before.text, "after": after.text, "step0": step0.text,
                       "before_correct": before.correct, "after_correct": after.correct,
                       "loss_before": before.mean_loss, "loss_after": after.mean_loss, "loss_step0": step0.mean_loss,
                       "mean_losses": mean_losses, "loss_items": len(items)},
                      {"outputs": outputs, "prompt": prompt, "reference": reference})


def step_recap(lesson: Lesson) -> StepResult:
    done = [s for s in STEPS if s.key != "recap" and s.key in lesson.results]
    table = [{"step": f"{i + 1}. {s.title}", "what we saw": lesson.results[s.key].note}
             for i, s in enumerate(STEPS) if s in done]
    missing = [s.title for s in STEPS if s.key != "recap" and s not in done]
    note = (f"All {len(done)} steps ran on {lesson.config.teacher} → {lesson.config.student}."
            if not missing else f"{len(done)} steps ran; not yet: {', '.join(missing)}.")
    return StepResult([], table, note, {"done": [s.key for s in done], "missing": missing})


STEPS = (
    Step("load", "Load the pair",
         "A **teacher** (large, knows the task) and a **student** (small, does not). PKT moves part of the "
         "teacher's *weights* into the student, so their shapes decide what can move: per layer, a student "
         "matrix $W_S \\in \\mathbb{R}^{o_S \\times i_S}$ takes an $o_S \\times i_S$ part of the teacher's "
         "$W_T \\in \\mathbb{R}^{o_T \\times i_T}$.", step_load),
    Step("sensitivity", "Sensitivity",
         "How much each teacher weight matters for the task, summed over the seed samples $x_n$: "
         "$S(\\theta) = \\sum_n \\left|\\,\\theta \\cdot \\partial L(x_n) / \\partial \\theta\\,\\right|$ "
         "(the first-order change of the loss if the weight were removed). The heatmap sums $S$ over each "
         "matrix.", step_sensitivity),
    Step("where", "Where it sits",
         "The same sums grouped by part of the model: attention ($W_q, W_k, W_v, W_o$), FFN "
         "($W_{gate}, W_{up}, W_{down}$), embeddings. Share of a part $= \\sum_{\\theta \\in part} S(\\theta) "
         "/ \\sum_\\theta S(\\theta)$; per parameter, compare it with the part's share of the parameters.",
         step_where, question=WHERE_QUESTION),
    Step("layers", "Layer choice",
         "Layer score $s_l = \\sum_{\\theta \\in \\text{layer } l} S(\\theta)$. The student has fewer layers, "
         "so the default map keeps the $L_S$ teacher layers with the highest $s_l$, in their original order, "
         "and gives student layer $j$ the $j$-th of them.", step_layers),
    Step("structure", "Structure",
         "From each chosen teacher matrix, take an $o_S \\times i_S$ part. The **submatrix** is the contiguous "
         "block with the largest summed sensitivity, $\\arg\\max_{r,c} \\sum_{i<o_S, j<i_S} S_{r+i,\\,c+j}$; "
         "its captured share is that sum over the matrix's total. Other structures pick the part differently.",
         step_structure, question=STRUCTURE_QUESTION),
    Step("export", "Export",
         "Each extracted block $W$ is factorised with a truncated SVD, $W \\approx U_r \\Sigma_r V_r^\\top$, "
         "into a rank-$r$ LoRA: $B = U_r \\Sigma_r / s$, $A = V_r^\\top$ with $s = \\alpha / r$, so "
         "$s\\,BA$ is the best rank-$r$ approximation. Energy kept $= \\sum_{i \\le r} \\sigma_i^2 / "
         "\\sum_i \\sigma_i^2$. Residual mode also lowers the student's base by $s\\,BA$.", step_export),
    Step("finetune", "Fine-tune",
         "The student trains its LoRA from that initialisation on the task's train split (cross-entropy on the "
         "answer tokens, AdamW, linear warm-up and decay). A short run, in the background: it survives a reload.",
         step_finetune, background=True),
    Step("compare", "Compare",
         "One test question through the student, the student with the export before training (step 0) and the "
         "student with the trained adapter; greedy answers, and the reference answer's loss per token "
         "$-\\log p(y_t \\mid x, y_{<t})$ under each.", step_compare),
    Step("recap", "Recap", "What each step showed, in one table.", step_recap),
)
STEP_KEYS = tuple(s.key for s in STEPS)


def step(key: str) -> Step:
    for s in STEPS:
        if s.key == key:
            return s
    raise ParaknowError(f"unknown lesson step '{key}'; the steps are {', '.join(STEP_KEYS)}.")


def run_step(lesson: Lesson, key: str) -> StepResult | None:
    """Compute one step (and store it in `lesson.results`); None while its background job runs.
    The steps before it need not have run: each computes what it needs."""
    result = step(key).run(lesson)
    if result is not None:
        lesson.results[key] = result
    return result


def judge(question: Question, result: StepResult, predicted: str) -> str:
    """The reveal of a "predict first" question, from the result."""
    answer = result.facts[question.answer_fact]
    name = lambda key: question.options.get(key, key)  # noqa: E731
    if predicted == answer:
        return f"You predicted {name(predicted)}: right."
    return f"You predicted {name(predicted)}; the most is {name(answer)}."
