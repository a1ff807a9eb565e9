"""The Lesson: a guided walk through parametric knowledge transfer on the demo pair (docs/lesson.md).

Nine steps, each running the real computation through the library and returning a `StepResult`:
the charts (paraknow.viz builders where one exists), a table of the numbers the step shows, and a
"what to notice" note written from those numbers -- never a canned sentence, so when the data say
the opposite of what one expects, the note says the opposite too.

    load -> sensitivity -> where -> layers -> structure -> export -> finetune -> compare -> recap

State lives in a `Lesson` (models, the sensitivity map, the plan, the export, the run). Everything
slow is cached on disk by content (the sensitivity map, the export, the fine-tuning run), so a new
Lesson on the same settings finds them again; fine-tuning runs as a background job
(`paraknow.runs.jobs`) and survives a reload. Used by pages/9_Lesson.py; no streamlit here.

state.py: settings, state, typed results · steps.py: the steps before training · training.py: the
fine-tune and compare steps · figures.py: the lesson's own charts · here: the registry `STEPS`.
"""
from __future__ import annotations

from ..core.errors import ParaknowError
from .figures import parameters_figure, presentation, structure_figure, token_loss_figure
from .state import (GROUP_NAMES, PRESENTATION_SCALE, Lesson, LessonConfig, Question, Step, StepResult,
    default_loader, pct, times)
from .steps import (STRUCTURE_QUESTION, WHERE_QUESTION, how_much, loss_change, step_export, step_layers, step_load,
    step_sensitivity, step_structure, step_where, structure_rows)
from .training import step_compare, step_finetune

__all__ = ["GROUP_NAMES", "PRESENTATION_SCALE", "STEPS", "STEP_KEYS", "STRUCTURE_QUESTION",
           "WHERE_QUESTION", "Lesson", "LessonConfig", "Question", "Step", "StepResult", "default_loader",
           "how_much", "judge", "loss_change", "parameters_figure", "pct", "presentation", "run_step", "step",
           "structure_figure", "structure_rows", "times", "token_loss_figure"]


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
