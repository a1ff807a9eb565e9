"""`train --overwrite` replaces only what paraknow wrote: a run that has ended, holding nothing but
a run's own files (paraknow.runs.rundir.RUN_FILES); anything else there is named and refused, and
nothing is touched."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hostile_inputs import files, place, snapshot  # noqa: F401 - files, place: fixtures

from paraknow.cli import main


def _train(files, run: Path, *extra) -> list[str]:
    return ["train", "--student", files["S"], "--data", files["D"], "--out", str(run), "--epochs", "1",
            "--batch", "4", "--micro-batch", "4", "--rank", "4", "--device", "cpu", *extra]


@pytest.mark.slow
def test_train_overwrite_replaces_an_ended_run_and_refuses_anything_it_did_not_write(files, place, capsys):
    run = Path(place["TMP"]) / "run"
    assert main(_train(files, run)) == 0
    first = json.loads((run / "status.json").read_text())
    assert first["state"] == "finished" and (run / "adapter" / "adapter_model.safetensors").is_file()
    capsys.readouterr()

    assert main(_train(files, run, "--seed", "1")) == 2  # without --overwrite: refused, and says how
    assert "already holds a run (state finished) (--overwrite replaces it)" in capsys.readouterr().err
    for foreign in ("MY_NOTES.txt", "adapter/mine.txt"):
        (run / foreign).write_text("mine\n")
        before = snapshot(place["TMP"])
        assert main(_train(files, run, "--seed", "1", "--overwrite")) == 2
        err = capsys.readouterr().err.strip()
        assert f"holds {foreign}, which paraknow did not write" in err and len(err.splitlines()) == 1, err
        assert snapshot(place["TMP"]) == before  # the run and the user's file untouched
        (run / foreign).unlink()

    assert main(_train(files, run, "--seed", "1", "--overwrite")) == 0
    assert json.loads((run / "spec.json").read_text())["seed"] == 1  # the new run, whole
    assert json.loads((run / "status.json").read_text())["started"] > first["started"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == first["step"]  # not appended to the old one
    assert sorted(p.name for p in run.parent.iterdir() if p.name.startswith(".run")) == []  # no temporaries


def test_train_overwrite_never_replaces_a_folder_that_is_not_a_run(files, place, capsys):
    before = snapshot(place["TMP"])
    assert main(_train(files, Path(place["V"]), "--overwrite")) == 2
    assert "is a non-empty directory that is not a paraknow run" in capsys.readouterr().err
    assert snapshot(place["TMP"]) == before
