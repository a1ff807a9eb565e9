"""Distillation (paraknow.runs.distill, paraknow.runs.distill_data): the logit-KD loss against an
independent computation, λ = 0 as plain fine-tuning, bad settings, the vocabulary rule, and the
teacher's completions as `paraknow generate` writes them."""
import json

import pytest
import torch
from safetensors.torch import load_file
from tiny import SEED_RECORDS

from paraknow.cli import main as cli_main
from paraknow.core.data import IGNORE_INDEX, encode
from paraknow.core.models import load_model
from paraknow.core.records import parse_jsonl, to_jsonl
from paraknow.runs.distill import distill_loss
from paraknow.runs.train import train
from paraknow.runs.train_config import TrainConfig

PROMPTED = SEED_RECORDS[:-1]  # without the plain-text record (no prompt to complete)


def reference_kd(student_logits, teacher_logits, targets, weight, temperature):
    """The loss written out for one sequence set: [n, V] logits at the completion positions, [n] targets.
    Returns (CE sum, KL sum) in float64."""
    s, t = student_logits.double(), teacher_logits.double()
    ce = -torch.log_softmax(s, -1).gather(1, targets[:, None]).sum()
    p_t = torch.softmax(t / temperature, -1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / temperature, -1))).sum()
    return ce, kl


def test_distill_loss_is_the_documented_formula():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 7, 11), torch.randn(2, 7, 13)  # teacher logits wider (padded vocab)
    labels = torch.randint(0, 11, (2, 7))
    labels[0, :3] = IGNORE_INDEX
    labels[1, :5] = IGNORE_INDEX
    keep = labels[:, 1:] != IGNORE_INDEX  # [2, 6]
    ce, kl = reference_kd(student[:, :-1][keep], teacher[:, :-1][keep][:, :11], labels[:, 1:][keep], 0.3, 2.5)
    n = int(keep.sum())
    got = distill_loss(student, teacher, labels, weight=0.3, temperature=2.5)
    assert got.item() == pytest.approx((0.7 * ce / n + 0.3 * 2.5 ** 2 * kl / n).item(), rel=1e-6)
    got = distill_loss(student, teacher, labels, weight=0.3, temperature=2.5, num_items=torch.tensor(20))
    assert got.item() == pytest.approx((0.7 * ce / 20 + 0.3 * 2.5 ** 2 * kl / 20).item(), rel=1e-6)
    same = distill_loss(student, student, labels, weight=1.0, temperature=3.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)  # KL of a distribution with itself


def kd_config(tmp_path, pair, records=PROMPTED, **overrides):
    tmp_path.mkdir(exist_ok=True)
    data = tmp_path / "train.jsonl"
    data.write_text(to_jsonl(records))
    settings = dict(student=pair["student"], data=str(data), out=str(tmp_path / "run"), epochs=1, batch=len(records),
                    micro_batch=4, rank=4, alpha=8, max_length=128, device="cpu", distill="logits",
                    distill_teacher=pair["teacher"], distill_weight=0.4, temperature=2.0)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_logit_kd_loss_at_step_0_equals_an_independent_computation(tmp_path, saved_pair):
    """One optimizer step over every record (two accumulated micro-batches, right-padded): the logged
    loss is the loss at the initial weights (vanilla LoRA: B = 0, the student itself)."""
    outcome = train(kd_config(tmp_path, saved_pair, records=SEED_RECORDS, micro_batch=4, batch=8))
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    student, tokenizer = load_model(saved_pair["student"])
    teacher, _ = load_model(saved_pair["teacher"])
    ce = kl = n = 0
    with torch.no_grad():
        for record in SEED_RECORDS:  # one unpadded sequence at a time
            item = encode(tokenizer, record, 128)
            ids = torch.tensor([item.input_ids])
            targets = torch.tensor(item.labels[1:])
            keep = targets != IGNORE_INDEX
            c, k = reference_kd(student(ids).logits[0, :-1][keep], teacher(ids).logits[0, :-1][keep],
                                targets[keep], 0.4, 2.0)
            ce, kl, n = ce + c, kl + k, n + int(keep.sum())
    assert outcome.state == "finished" and outcome.status["teacher_tokens"] > 0
    assert logged == pytest.approx(float(0.6 * ce / n + 0.4 * 2.0 ** 2 * kl / n), rel=1e-5)
    assert logged != pytest.approx(float(ce / n), rel=1e-3)  # the KL term is really in it


def test_weight_0_is_plain_fine_tuning_exactly(tmp_path, saved_pair):
    plain = train(kd_config(tmp_path / "a", saved_pair, batch=4, micro_batch=2, distill=None, distill_teacher=None))
    kd = train(kd_config(tmp_path / "b", saved_pair, batch=4, micro_batch=2, distill_weight=0.0))
    losses = [[json.loads(line)["loss"] for line in (o.run_dir / "metrics.jsonl").read_text().splitlines()]
              for o in (plain, kd)]
    assert len(losses[0]) == 2 and losses[0] == losses[1]
    a, b = (load_file(o.run_dir / "adapter" / "adapter_model.safetensors") for o in (plain, kd))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert kd.status["teacher_tokens"] > 0 and "teacher_tokens" not in plain.status


def swapped_vocabulary_teacher(tmp_path, pair):
    """The pair's teacher with a tokenizer of the same size whose ids of 'a' and 'b' are swapped."""
    import shutil

    path = tmp_path / "teacher_swapped"
    shutil.copytree(pair["teacher"], path)
    spec = json.loads((path / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    (path / "tokenizer.json").write_text(json.dumps(spec))
    return str(path)


def train_argv(tmp_path, pair, *extra):
    data = tmp_path / "train.jsonl"
    data.write_text(to_jsonl(PROMPTED))
    return ["train", "--student", pair["student"], "--data", str(data), "--out", str(tmp_path / "run"),
            "--epochs", "1", "--batch", "4", "--micro-batch", "2", "--rank", "4", "--device", "cpu",
            "--max-length", "128", *extra]


@pytest.mark.parametrize("flags, key", [
    (["--distill-weight", "1.5"], "distill_weight"), (["--distill-weight", "-0.1"], "distill_weight"),
    (["--distill-weight", "nan"], "distill_weight"), (["--temperature", "0"], "temperature"),
    (["--temperature", "-1"], "temperature"), (["--temperature", "inf"], "temperature")])
def test_bad_weight_or_temperature_exits_2_naming_the_key(tmp_path, saved_pair, capsys, flags, key):
    argv = train_argv(tmp_path, saved_pair, "--distill", "logits", "--distill-teacher", saved_pair["teacher"], *flags)
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and key in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_distill_and_its_teacher_come_together(tmp_path, saved_pair, capsys):
    assert cli_main(train_argv(tmp_path, saved_pair, "--distill", "logits")) == 2
    assert "--distill-teacher" in capsys.readouterr().err
    assert cli_main(train_argv(tmp_path, saved_pair, "--distill-teacher", saved_pair["teacher"])) == 2
    assert "--distill logits|sequences" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_another_vocabulary_is_refused_for_logits_but_not_for_sequences(tmp_path, saved_pair, capsys):
    teacher = swapped_vocabulary_teacher(tmp_path, saved_pair)
    assert cli_main(train_argv(tmp_path, saved_pair, "--distill", "logits", "--distill-teacher", teacher)) == 2
    err = capsys.readouterr().err
    assert "another vocabulary" in err and "--distill sequences" in err
    assert not (tmp_path / "run").exists()
    argv = train_argv(tmp_path, saved_pair, "--distill", "sequences", "--distill-teacher", teacher,
                      "--eval-max-new-tokens", "6")
    assert cli_main(argv) == 0
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "finished" and status["teacher_tokens"] > 0 and status["teacher_flops"] > 0


def test_distill_data_equals_generate_for_each_prompt_and_is_cached(tmp_path, saved_pair, capsys, monkeypatch):
    data = tmp_path / "d.jsonl"
    data.write_text(to_jsonl(PROMPTED))
    out = tmp_path / "distilled.jsonl"

    def argv(path):
        return ["distill-data", "--teacher", saved_pair["teacher"], "--data", str(data), "--out", str(path),
                "--max-new-tokens", "12", "--batch", "3", "--device", "cpu"]

    assert cli_main(argv(out)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["records"] == len(PROMPTED) and summary["teacher_tokens"] > 0
    written = parse_jsonl(out.read_text())
    assert len(written) == len(PROMPTED)
    for before, after in zip(PROMPTED, written):
        prompt = before["messages"][0]["content"] if "messages" in before else before["prompt"]
        completion = after["messages"][-1]["content"] if "messages" in after else after["completion"]
        assert {k: v for k, v in after.items() if k not in ("messages", "completion")} == \
            {k: v for k, v in before.items() if k not in ("messages", "completion")}
        if "messages" in before:
            assert after["messages"][:-1] == before["messages"][:-1]
        assert cli_main(["generate", "--model", saved_pair["teacher"], "--prompt", prompt,
                         "--max-new-tokens", "12", "--device", "cpu"]) == 0
        assert capsys.readouterr().out == completion + "\n"
    from paraknow.runs import distill_data

    monkeypatch.setattr(distill_data, "generate_records", lambda *a, **k: pytest.fail("not served from the cache"))
    again = tmp_path / "again.jsonl"
    assert cli_main(argv(again)) == 0
    assert again.read_text() == out.read_text()
    assert json.loads(capsys.readouterr().out)["teacher_tokens"] == summary["teacher_tokens"]


def test_distill_data_refuses_plain_text_records(tmp_path, saved_pair, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(to_jsonl(SEED_RECORDS))
    out = tmp_path / "x.jsonl"
    assert cli_main(["distill-data", "--teacher", saved_pair["teacher"], "--data", str(data), "--out", str(out)]) == 2
    assert "plain text" in capsys.readouterr().err and not out.exists()
