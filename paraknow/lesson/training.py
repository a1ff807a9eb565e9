"""The steps that use the fine-tuning run: its curves, and the student before and after on a test question."""
from __future__ import annotations

from ..core.errors import ParaknowError
from .figures import token_loss_figure
from .state import Lesson, StepResult, pct
from .steps import loss_change


def step_finetune(lesson: Lesson) -> StepResult | None:
    """The finished run's curves and note; None while the run is queued or running (or not started)."""
    from ..runs.rundir import read_metrics
    from ..viz import curve_points, run_curves

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

    from ..core.tasks import task_records
    from ..runs.evaluate import completion_losses
    from ..runs.playground import compare_models, task_item
    from ..transfer.lora import attach_adapter

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
