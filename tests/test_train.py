"""Fine-tuning runs (`paraknow train`) on tiny random models: files, adapters, STOP, failures."""
import json

import pytest
import torch
from peft import PeftModel
from tiny import SEED_RECORDS, make_tokenizer, tiny_llama
from transformers import LlamaForCausalLM, TrainerCallback

from paraknow.cli import main as cli_main
from paraknow.core.architecture import describe
from paraknow.runs.rundir import METRIC_KEYS
from paraknow.runs.train import run_training, train
from paraknow.runs.train_config import TrainConfig, load_spec
from paraknow.transfer.export import export_transfer
from paraknow.transfer.plan import TransferConfig, plan_transfer
from paraknow.transfer.sensitivity import SensitivityConfig, compute_sensitivity

INPUT = torch.tensor([[1, 20, 33, 45, 50, 61, 70, 12, 5]])
STUDENT = dict(layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, seed=2)


def save_student(tmp_path, tied=False):
    path = tmp_path / ("student_tied" if tied else "student")
    tiny_llama(tied=tied, **STUDENT).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def write_data(tmp_path, records=SEED_RECORDS):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def config_for(tmp_path, student, **overrides):
    data = write_data(tmp_path)
    settings = dict(student=str(student), data=str(data), out=str(tmp_path / "run"), epochs=1, batch=4,
                    micro_batch=2, rank=4, alpha=8, max_length=128, device="cpu")
    settings.update(overrides)
    return TrainConfig(**settings)


def logits(model):
    model.eval()
    with torch.no_grad():
        return model(input_ids=INPUT).logits


def original_with_adapter(student_dir, adapter_dir):
    original = LlamaForCausalLM.from_pretrained(student_dir).eval()
    return PeftModel.from_pretrained(original, str(adapter_dir))


def assert_clean_run_dir(run_dir):
    leftovers = {p.name for p in run_dir.iterdir()} - {"spec.json", "status.json", "metrics.jsonl", "adapter"}
    assert not leftovers


def test_vanilla_run_writes_spec_status_metrics_and_adapter(tmp_path):
    student = save_student(tmp_path)
    data = write_data(tmp_path)
    config = config_for(tmp_path, student, eval_data=str(data), eval_every=1, eval_limit=3,
                        eval_max_new_tokens=4)
    outcome = train(config)
    run = tmp_path / "run"
    assert outcome.state == "finished"
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["error"] is None
    assert status["step"] == status["max_steps"] == 2 and status["pid"] > 0
    assert status["started"] <= status["finished"]
    assert status["final_eval"]["n"] == 3 and status["final_eval"]["accuracy"] is not None
    assert status["samples_per_s"] > 0
    spec = json.loads((run / "spec.json").read_text())
    assert spec["init"] == "vanilla" and spec["rank"] == 4 and len(spec["target_modules"]) == 7
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:
        assert set(METRIC_KEYS) <= set(line) and "eval_loss" in line and "eval_accuracy" in line
        assert line["loss"] > 0 and line["grad_norm"] > 0
    assert lines[-1]["eval_loss"] == pytest.approx(status["final_eval"]["loss"])
    assert_clean_run_dir(run)
    adapted = original_with_adapter(student, run / "adapter")
    torch.testing.assert_close(logits(adapted), logits(outcome.model), rtol=1e-4, atol=1e-4)
    assert (logits(adapted) - logits(LlamaForCausalLM.from_pretrained(student))).abs().max() > 0


def test_pissa_adapter_is_plain_lora_on_the_original_student(tmp_path):
    student = save_student(tmp_path)
    outcome = train(config_for(tmp_path, student, init="pissa", lr=1e-2))
    run = tmp_path / "run"
    assert outcome.state == "finished"
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 16
    assert adapter_config["init_lora_weights"] is True
    assert_clean_run_dir(run)
    trained = logits(outcome.model)  # PiSSA base (mutated) + trained adapter
    torch.testing.assert_close(logits(original_with_adapter(student, run / "adapter")), trained,
                               rtol=1e-4, atol=1e-4)


def make_export(tmp_path, student_dir, tied):
    teacher = tiny_llama(layers=4, hidden=96, ffn=192, heads=6, kv_heads=2, seed=1)
    student = LlamaForCausalLM.from_pretrained(student_dir)
    scores = compute_sensitivity(teacher, make_tokenizer(), SEED_RECORDS, SensitivityConfig(samples=4))
    config = TransferConfig(rank=4, alpha=8, modules=("attn", "ffn", "embed"))
    t_info, s_info = describe(teacher), describe(student)
    plan = plan_transfer(t_info, s_info, scores, config)
    out = tmp_path / "export"
    export_transfer(teacher, student, t_info, s_info, plan, config, out,
                    {"teacher": "t", "student": str(student_dir), "metric": "taylor-abs"})
    return out


@pytest.mark.filterwarnings("ignore:.*tie_word_embeddings:UserWarning")
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.slow
def test_residual_export_run_converts_to_plain_lora(tmp_path, tied):
    student = save_student(tmp_path, tied=tied)
    export = make_export(tmp_path, student, tied)
    config = config_for(tmp_path, student, init=str(export), rank=None, alpha=None, lr=1e-2)
    outcome = train(config)
    run = tmp_path / "run"
    assert outcome.state == "finished"
    spec = json.loads((run / "spec.json").read_text())
    assert spec["rank"] == 4 and spec["alpha"] == 8 and spec["init"] == str(export)
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 16
    assert_clean_run_dir(run)
    trained = logits(outcome.model)  # residual base + trained LoRA, as it trained
    plain = logits(original_with_adapter(student, run / "adapter"))
    torch.testing.assert_close(plain, trained, rtol=1e-4, atol=1e-4)
    # the export's rank and alpha are the run's: a conflicting --rank is refused
    with pytest.raises(Exception, match="differs from the export"):
        config_for(tmp_path, student, init=str(export), rank=8, out=str(tmp_path / "other")).resolved()


class _AtStep(TrainerCallback):
    def __init__(self, step, action):
        self.step, self.action = step, action

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.action()


@pytest.mark.slow
def test_stop_file_stops_cleanly_and_saves_the_adapter(tmp_path):
    student = save_student(tmp_path)
    run = tmp_path / "run"
    config = config_for(tmp_path, student, epochs=5)
    outcome = train(config, callbacks=[_AtStep(1, lambda: (run / "STOP").touch())])
    status = json.loads((run / "status.json").read_text())
    assert outcome.state == status["state"] == "stopped"
    assert status["step"] == 2 < status["max_steps"] == 10  # STOP is seen at the next step end
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    torch.testing.assert_close(logits(original_with_adapter(student, run / "adapter")), logits(outcome.model),
                               rtol=1e-4, atol=1e-4)


def test_exception_marks_the_run_failed(tmp_path, capsys, monkeypatch):
    import paraknow.runs.train as train_module

    student = save_student(tmp_path)
    run = tmp_path / "run"

    def boom():
        raise RuntimeError("synthetic failure")

    monkeypatch.setattr(train_module, "train", lambda cfg, overwrite=False, _train=train:
                        _train(cfg, callbacks=[_AtStep(1, boom)], overwrite=overwrite))
    assert run_training(config_for(tmp_path, student, epochs=3)) == 1
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "synthetic failure" in status["error"]
    assert "Traceback" in capsys.readouterr().out
    assert not (run / "adapter").exists() and not (run / ".trainer").exists()


def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    student = save_student(tmp_path)
    data = write_data(tmp_path)
    base = ["train", "--student", str(student), "--data", str(data)]
    capsys.readouterr()  # save_pretrained's progress bar
    cases = [
        (["--out", str(tmp_path / "r1"), "--batch", "6", "--micro-batch", "4"], "not a multiple"),
        (["--out", str(tmp_path / "r2"), "--init", str(tmp_path / "nowhere")], "--init must be"),
        (["--out", str(tmp_path / "r3"), "--eval-every", "2"], "needs --eval-data"),
        (["--out", str(tmp_path / "r5"), "--max-length", "8"], "no completion tokens left"),
    ]
    for extra, message in cases:
        assert cli_main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
        assert not (tmp_path / extra[1].split("/")[-1]).exists()
    assert cli_main(["train", "--student", str(student), "--data", str(tmp_path / "missing.jsonl"),
                     "--out", str(tmp_path / "r4")]) == 2
    assert "data file not found" in capsys.readouterr().err and not (tmp_path / "r4").exists()
    assert cli_main(["train", "--student", str(student), "--data", str(data)]) == 2
    assert "--out" in capsys.readouterr().err
    # a RUN_DIR that already holds a run is refused and left untouched
    done = tmp_path / "done"
    done.mkdir()
    (done / "status.json").write_text('{"state": "finished"}')
    assert cli_main(base + ["--out", str(done)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert sorted(p.name for p in done.iterdir()) == ["status.json"]


def test_spec_round_trip_and_cli_spec(tmp_path, capsys):
    student = save_student(tmp_path)
    config = config_for(tmp_path, student, eval_limit=5, label="x")
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(Exception, match="unknown train setting"):
        TrainConfig.from_dict({**config.to_dict(), "bogus": 1})
    spec_dir = tmp_path / "prepared"
    spec_dir.mkdir()
    (spec_dir / "spec.json").write_text(json.dumps(config.to_dict()))
    loaded = load_spec(spec_dir / "spec.json")
    assert loaded.out == str(spec_dir) and loaded.label == "x"
    assert cli_main(["train", "--spec", str(spec_dir / "spec.json"), "--student", str(student)]) == 2
    assert "--spec already names the run" in capsys.readouterr().err


@pytest.mark.slow
def test_same_command_under_a_two_process_launcher(tmp_path):
    """`accelerate launch` / torchrun on several devices runs `python -m paraknow train` unchanged: two
    CPU processes (DDP over gloo) split each batch, rank 0 alone writes the run directory."""
    import os
    import subprocess
    import sys

    student = save_student(tmp_path)
    data = write_data(tmp_path, SEED_RECORDS * 2)
    n = len(SEED_RECORDS) * 2
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "paraknow",
         "train", "--student", str(student), "--data", str(data), "--out", str(out), "--epochs", "1",
         "--batch", "4", "--micro-batch", "1", "--rank", "4", "--alpha", "8", "--max-length", "128",
         "--device", "cpu"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x 2 processes" in proc.stdout
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "finished" and status["max_steps"] == -(-n // 4)  # batch 4 = 1 x 2 accum x 2 procs
    assert_clean_run_dir(out)
    original_with_adapter(student, out / "adapter")  # a plain LoRA for the original student


def test_a_diverging_run_fails_at_the_first_non_finite_loss_and_saves_no_adapter(tmp_path, capsys, monkeypatch):
    """The loss turns NaN from the third micro-batch on (as at a rate that overflows the weights; rates
    above MAX_LR are refused before training, and below it the tiny model saturates instead)."""
    from paraknow.runs import train_loss

    original, calls = train_loss.CompletionTrainer.compute_loss, []

    def diverging(self, *args, **kwargs):
        calls.append(1)
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if len(calls) > 2 else loss

    monkeypatch.setattr(train_loss.CompletionTrainer, "compute_loss", diverging)
    student = save_student(tmp_path)
    data = write_data(tmp_path, SEED_RECORDS * 2)
    run = tmp_path / "run"
    argv = ["train", "--student", str(student), "--data", str(data), "--out", str(run), "--lr", "1e-3",
            "--epochs", "3", "--batch", "2", "--micro-batch", "2", "--rank", "4", "--device", "cpu"]
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: training diverged: the ") and "at step 3 (lr " in err and len(err.splitlines()) == 1
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and status["error"] == err.removeprefix("error: ")
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    total = 3 * len(SEED_RECORDS * 2) // 2
    assert steps[-1]["step"] < total  # stopped at the first non-finite value, not after every epoch
    assert all(torch.isfinite(torch.tensor([s["loss"], s["grad_norm"]])).all() for s in steps[:-1])
    assert not (run / "adapter").exists() and not (run / ".trainer").exists()
