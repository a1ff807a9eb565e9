"""Hostile input on the command line: one table of cases, each with the exit code, a fragment
of the one-line reason, and the promise that no directory or file was touched or left behind.

Plus the behaviours around the table: --overwrite replaces only a previous export, a second
writer of one output is refused while the first holds its lock, an atomic replace never lets
the folder vanish, a damaged GGUF hash memo is a cache miss, and the GGUF memory check runs
from the header before any de-quantisation.
"""
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hostile_inputs import files, place, prepare, small_gguf, snapshot  # noqa: F401 - files, place: fixtures

from paraknow.cli import main
from paraknow.core import gguf_models, models
from paraknow.core.errors import ParaknowError
from paraknow.core.fsio import atomic_directory, atomic_write_json, lock_path, output_lock
from paraknow.core.paths import cache_dir

ROOT = Path(__file__).resolve().parents[1]


EXTRACT = ["extract", "--teacher", "{T}", "--student", "{S}", "--data", "{D}"]
TRAIN = ["train", "--student", "{S}", "--data", "{D}", "--out", "{TMP}/run"]
SENS = ["sensitivity", "--model", "{T}", "--data", "{D}", "--out", "{TMP}/sens.safetensors"]

# id, argv, exit code, fragment of the one-line reason, setup
CASES = [
    # never delete or overwrite a folder paraknow did not make
    ("extract-into-foreign-dir", EXTRACT + ["--out", "{V}"], 2, "non-empty directory", None),
    ("extract-overwrite-foreign-dir", EXTRACT + ["--out", "{V}", "--overwrite"], 2, "paraknow did not make it", None),
    ("extract-onto-previous-export", EXTRACT + ["--out", "{E}"], 2, "already holds a paraknow export", None),
    ("extract-overwrite-export-holding-user-notes", EXTRACT + ["--out", "{E}", "--overwrite"], 2,
     "holds MY_NOTES.txt, which paraknow did not write", "notes"),
    ("extract-overwrite-export-holding-user-file-in-residual", EXTRACT + ["--out", "{E}", "--overwrite"], 2,
     "holds residual/mine.txt, which paraknow did not write", "residual-notes"),
    ("extract-out-dot", EXTRACT + ["--out", "."], 2, "non-empty directory", None),
    ("extract-out-home", EXTRACT + ["--out", "~"], 2, "non-empty directory", None),
    ("extract-out-is-file", EXTRACT + ["--out", "{F}"], 2, "not a directory", None),
    ("extract-parent-is-file", EXTRACT + ["--out", "{F}/export"], 2, "is not a directory", None),
    ("train-into-foreign-dir", ["train", "--student", "{S}", "--data", "{D}", "--out", "{V}"], 2,
     "not a paraknow run", None),
    ("sensitivity-onto-model-file", ["sensitivity", "--model", "{T}", "--data", "{D}", "--out", "{S}/model.safetensors"],
     2, "not a paraknow sensitivity file", None),
    ("sensitivity-out-suffix", ["sensitivity", "--model", "{T}", "--data", "{D}", "--out", "{F}"], 2,
     "must end in .safetensors", None),
    # numbers: finite and in range, checked before any work
    ("extract-alpha-nan", EXTRACT + ["--out", "{TMP}/x", "--alpha", "nan"], 2, "alpha must be a finite number", None),
    ("extract-alpha-inf", EXTRACT + ["--out", "{TMP}/x", "--alpha", "inf"], 2, "alpha must be a finite number", None),
    ("extract-alpha-negative", EXTRACT + ["--out", "{TMP}/x", "--alpha", "-1"], 2, "alpha must be a number greater than 0", None),
    ("extract-alpha-1e308", EXTRACT + ["--out", "{TMP}/x", "--alpha", "1e308"], 2,
     "alpha must be at most 1.04858e+06 at rank 16", None),
    ("extract-alpha-1e-300-overflows-B", EXTRACT + ["--out", "{TMP}/x", "--alpha", "1e-300", "--samples", "4",
                                         "--device", "cpu"], 2,
     "the LoRA factor B is not finite (overflow at alpha 1e-300)", None),
    ("extract-seed-negative", EXTRACT + ["--out", "{TMP}/x", "--seed", "-1"], 2, "seed must be a whole number at least 0", None),
    ("extract-seed-2**70", EXTRACT + ["--out", "{TMP}/x", "--seed", str(2**70)], 2, "at most 4294967295", None),
    ("extract-rank-zero", EXTRACT + ["--out", "{TMP}/x", "--rank", "0"], 2, "rank must be a whole number at least 1", None),
    ("extract-samples-2**40", EXTRACT + ["--out", "{TMP}/x", "--samples", str(2**40)], 2, "at most 2147483647", None),
    ("extract-device-bogus", EXTRACT + ["--out", "{TMP}/x", "--device", "bogus"], 2, "unknown device 'bogus'", None),
    ("train-lr-inf", TRAIN + ["--lr", "inf"], 2, "lr must be a finite number", None),
    ("train-lr-nan", TRAIN + ["--lr", "nan"], 2, "lr must be a finite number", None),
    ("train-alpha-inf", TRAIN + ["--alpha", "inf"], 2, "alpha must be a finite number", None),
    ("train-epochs-inf", TRAIN + ["--epochs", "inf"], 2, "epochs must be a finite number", None),
    ("train-epochs-zero", TRAIN + ["--epochs", "0"], 2, "epochs must be a number greater than 0", None),
    ("train-seed-negative", TRAIN + ["--seed", "-1"], 2, "seed must be a whole number at least 0", None),
    ("train-seed-2**70", TRAIN + ["--seed", str(2**70)], 2, "at most 4294967295", None),
    ("train-dropout-one", TRAIN + ["--dropout", "1"], 2, "dropout must be a number at least 0 and less than 1", None),
    ("train-warmup-nan", TRAIN + ["--warmup", "nan"], 2, "warmup must be a finite number", None),
    ("train-device-bogus", TRAIN + ["--device", "bogus"], 2, "unknown device 'bogus'", None),
    ("train-pissa-rank-too-large", TRAIN + ["--init", "pissa", "--rank", "1000"], 2,
     "rank 1000 is larger than q_proj's smallest dimension 64", None),
    ("train-vanilla-rank-too-large", TRAIN + ["--rank", "100"], 2, "larger than q_proj's smallest dimension", None),
    ("train-spec-wrong-type", ["train", "--spec", "{W}"], 2, "'epochs' must be a number (got str '3')", "spec"),
    ("train-spec-not-object", ["train", "--spec", "{L}"], 2, "holds a JSON list, not an object", "spec"),
    ("sensitivity-samples-zero", SENS + ["--samples", "0"], 2, "samples must be a whole number at least 1", None),
    ("train-batch-zero", TRAIN + ["--batch", "0"], 2, "batch must be a whole number at least 1", None),
    ("eval-max-new-tokens-zero", ["eval", "--model", "{S}", "--data", "{D}", "--max-new-tokens", "0"], 2,
     "--max-new-tokens must be a whole number at least 1", None),
    ("sensitivity-device-bogus", SENS + ["--device", "gpu"], 2, "unknown device 'gpu'", None),
    ("cache-older-than-inf", ["cache", "list", "--older-than", "inf"], 2, "finite number of days", None),
    ("cache-kind-bogus", ["cache", "clear", "--kind", "everything"], 2, "invalid choice", None),
    # damaged or incomplete model files: one line naming the file and what to do
    ("train-truncated-student", ["train", "--student", "{trunc}", "--data", "{D}", "--out", "{TMP}/run"], 2,
     "model.safetensors is damaged", None),
    ("sensitivity-truncated", ["sensitivity", "--model", "{trunc}", "--data", "{D}", "--out", "{TMP}/s.safetensors"],
     2, "truncated or not a safetensors file", None),
    ("sensitivity-random-bytes", ["sensitivity", "--model", "{random}", "--data", "{D}", "--out", "{TMP}/s.safetensors"],
     2, "model.safetensors is damaged", None),
    ("extract-wrong-shape-student", ["extract", "--teacher", "{T}", "--student", "{shape}", "--data", "{D}",
                                     "--out", "{TMP}/x"], 2, "up_proj.weight has shape [7, 3]", None),
    ("eval-missing-weight", ["eval", "--model", "{missing}", "--data", "{D}"], 2, "lacks 1 weight(s)", None),
    ("train-damaged-tokenizer-run-dir-removed", ["train", "--student", "{badtok}", "--data", "{D}", "--out",
                                                 "{TMP}/run"], 2, "could not load", None),
    ("train-no-tokenizer", ["train", "--student", "{notok}", "--data", "{D}", "--out", "{TMP}/run"], 2,
     "has no tokenizer", None),
    ("sensitivity-corrupt-gguf", ["sensitivity", "--model", "{gguf}", "--data", "{D}", "--out", "{TMP}/s.safetensors"],
     2, "corrupt.gguf is not a readable GGUF file", None),
    ("corrupt-gguf-hash-memo", ["sensitivity", "--model", "{gguf}", "--data", "{D}", "--out", "{TMP}/s.safetensors"],
     2, "corrupt.gguf is not a readable GGUF file", "memo"),
    # a result is finite or a failure
    ("sensitivity-nan-weights", ["sensitivity", "--model", "{nan}", "--data", "{D}", "--samples", "2", "--out",
                                 "{TMP}/s.safetensors"], 2, "seed sample 1 gives a loss of nan", None),
    ("sensitivity-nan-weights-magnitude", ["sensitivity", "--model", "{nan}", "--data", "{D}", "--metric", "magnitude",
                                           "--samples", "2", "--out", "{TMP}/s.safetensors"], 2,
     "the sensitivity of model.layers.1.self_attn.q_proj.weight is not finite", None),
    ("sensitivity-all-zero-map", ["sensitivity", "--model", "{zero}", "--data", "{D}", "--metric", "magnitude",
                                  "--samples", "2", "--out", "{TMP}/s.safetensors"], 2,
     "every sensitivity score is zero", None),
    ("sensitivity-empty-record", ["sensitivity", "--model", "{T}", "--data", "{empty}", "--out", "{TMP}/s.safetensors"],
     2, "empty.jsonl line 2: 'text' is empty", None),
    ("train-empty-record", ["train", "--student", "{S}", "--data", "{empty}", "--out", "{TMP}/run"], 2,
     "empty.jsonl line 2: 'text' is empty", None),
    # the machine refuses: one line, exit 2, nothing partial (disk full is a writer raising ENOSPC)
    ("extract-disk-full", EXTRACT + ["--out", "{TMP}/x", "--samples", "4", "--device", "cpu"], 2,
     "No space left on device", "enospc"),
    ("sensitivity-disk-full", SENS + ["--samples", "2"], 2, "No space left on device", "enospc"),
    ("cache-list-cache-is-a-file", ["cache", "list"], 2, "plain.txt is a file", "cache-file"),
    ("extract-cache-is-a-file", EXTRACT + ["--out", "{TMP}/x"], 2, "plain.txt is a file", "cache-file"),
    ("extract-out-dangling-symlink", EXTRACT + ["--out", "{TMP}/dangling"], 2,
     "dangling is a symbolic link to", "dangling"),
    ("extract-out-symlink-to-export", EXTRACT + ["--out", "{TMP}/linked", "--overwrite"], 2,
     "linked is a symbolic link to", "linked"),
    ("sensitivity-out-dangling-symlink", SENS[:-1] + ["{TMP}/dangling.safetensors"], 2,
     "dangling.safetensors is a symbolic link to", "dangling"),
    ("train-out-dangling-symlink", TRAIN[:-1] + ["{TMP}/dangling"], 2, "dangling is a symbolic link to", "dangling"),
    ("extract-300-char-name", EXTRACT + ["--out", "{TMP}/" + "a" * 300], 2, "choose a shorter name", None),
    ("train-300-char-name", TRAIN[:-1] + ["{TMP}/" + "r" * 300], 2, "choose a shorter name", None),
    ("sensitivity-300-char-name", SENS[:-1] + ["{TMP}/" + "s" * 300 + ".safetensors"], 2, "choose a shorter name",
     None),
    # damaged or hostile files named, not a traceback
    ("eval-negative-layer-count", ["eval", "--model", "{neg}", "--data", "{D}"], 2,
     "config.json has num_hidden_layers = -3, not a whole number at least 1", None),
    ("eval-corrupt-adapter-safetensors", ["eval", "--model", "{S}", "--adapter", "{badad}", "--data", "{D}"], 2,
     "badad/adapter_model.safetensors is damaged", None),
    ("eval-pickle-only-adapter", ["eval", "--model", "{S}", "--adapter", "{pickled}", "--data", "{D}"], 2,
     "only adapter_model.bin, a pickle, which paraknow never loads", None),
    ("train-init-corrupt-export", TRAIN + ["--init", "{badexp}"], 2, "badexp/adapter_model.safetensors is damaged",
     None),
    ("extract-recipe-override-of-a-missing-module", ["extract", "--recipe", "{overrides}", "--out", "{TMP}/x",
                                                     "--device", "cpu"], 2,
     "overrides names model.layers.9.self_attn.q_proj, which is not a module of the student", None),
    # data
    ("sensitivity-deeply-nested-line", ["sensitivity", "--model", "{T}", "--data", "{deep}", "--out",
                                        "{TMP}/s.safetensors"], 2, "deep.jsonl line 2: JSON nested deeper than 64", None),
]


@pytest.mark.parametrize("argv, code, fragment, setup", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_cli_input(files, place, argv, code, fragment, setup, capsys, monkeypatch):
    names = {**files, **place}
    prepare(setup, place, monkeypatch)
    if setup == "spec":
        Path(place["W"]).write_text(json.dumps({"student": files["S"], "data": files["D"], "epochs": "3"}))
        Path(place["L"]).write_text("[1, 2]")
    if setup == "memo":
        (cache_dir("models") / "gguf_hashes.json").write_text("{not json")
    if setup == "notes":
        Path(place["E"], "MY_NOTES.txt").write_text("mine\n")
    if setup == "residual-notes":
        Path(place["E"], "residual").mkdir()
        Path(place["E"], "residual", "mine.txt").write_text("mine\n")
    before = snapshot(place["TMP"], Path(files["S"]).parent)
    try:
        got = main([arg.format(**names) for arg in argv])
    except SystemExit as exc:  # argparse's own usage errors
        got = exc.code
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines()
                    if not re.match(r"\[\d+/\d+\] ", line))  # progress lines of work done before the refusal
    assert got == code
    assert fragment in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert snapshot(place["TMP"], Path(files["S"]).parent) == before  # nothing touched, nothing left behind
    if setup == "memo":  # a damaged memo is a cache miss, rewritten as valid JSON
        memo = json.loads((cache_dir("models") / "gguf_hashes.json").read_text())
        assert list(memo.values()) == [hashlib.sha256(Path(files["gguf"]).read_bytes()).hexdigest()]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission bits")
def test_unwritable_out_parent_is_found_before_any_work(files, place, tmp_path, capsys):
    locked = tmp_path / "readonly"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code = main(EXTRACT[:1] + [a.format(**files) for a in EXTRACT[1:]] + ["--out", str(locked / "x")])
    finally:
        locked.chmod(0o755)
    assert code == 2 and "cannot write to" in capsys.readouterr().err


def test_overwrite_replaces_only_a_previous_export(files, place, capsys):
    settings = ["--rank", "4", "--samples", "4", "--layers", "manual:3,-", "--device", "cpu"]
    argv = [a.format(**files) for a in EXTRACT] + ["--out", place["E"]] + settings
    assert main(argv + ["--overwrite"]) == 0
    export = Path(place["E"])
    manifest = json.loads((export / "paraknow.json").read_text())
    assert manifest["rank"] == 4 and manifest["layer_map"] == [3, None]
    assert (export / "adapter_model.safetensors").read_bytes() != b"old"
    assert not list(export.parent.glob(".old_export*"))  # no temporary or lock file left beside it
    assert main(argv) == 2  # without --overwrite: refused
    assert "already holds a paraknow export" in capsys.readouterr().err


def _hold_lock_in_another_process(path: Path, seconds: float, note: Path | None = None) -> subprocess.Popen:
    """A process that holds `path`'s output lock for `seconds`, then writes `note` (if given)
    just before it lets go."""
    code = ("import sys, time, pathlib; from paraknow.core.fsio import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(float(sys.argv[2]))\n"
            "    sys.argv[3] and pathlib.Path(sys.argv[3]).write_text('done')")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(seconds), str(note or "")], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.slow
def test_second_writer_of_one_output_is_refused(files, tmp_path, capsys):
    out = tmp_path / "export"
    holder = _hold_lock_in_another_process(out, 60)
    try:
        code = main([a.format(**files) for a in EXTRACT] + ["--out", str(out), "--device", "cpu"])
        assert code == 2 and "another paraknow process is writing" in capsys.readouterr().err
        code = main(["train", "--student", files["S"], "--data", files["D"], "--out", str(out)])
        assert code == 2 and "another paraknow process is writing" in capsys.readouterr().err
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    sens = tmp_path / "map.safetensors"
    holder = _hold_lock_in_another_process(sens, 60)
    try:  # the second `sensitivity --out` of one file is refused at once, before any work
        code = main(["sensitivity", "--model", files["T"], "--data", files["D"], "--samples", "2", "--out", str(sens)])
        captured = capsys.readouterr()
        assert code == 2 and "another paraknow process is writing" in captured.err and "sample 1" not in captured.err
        assert not sens.exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_atomic_directory_waits_for_the_other_writer_and_never_vanishes(tmp_path):
    out = tmp_path / "artifact"
    with atomic_directory(out) as tmp:
        atomic_write_json(tmp / "paraknow.json", {"version": 0})
    note = tmp_path.parent / f"{tmp_path.name}-holder-done"
    holder = _hold_lock_in_another_process(out, 1.0, note)
    missing, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            if not (out / "paraknow.json").exists():
                missing.append(time.time())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with atomic_directory(out, replaces="paraknow.json", wait_s=30) as tmp:
            atomic_write_json(tmp / "paraknow.json", {"version": 1})
        assert note.exists()  # it only got through once the other writer was done
        for version in range(2, 30):
            with atomic_directory(out, replaces="paraknow.json") as tmp:
                atomic_write_json(tmp / "paraknow.json", {"version": version})
    finally:
        stop.set()
        watcher.join()
        holder.wait()
        note.unlink(missing_ok=True)
    assert json.loads((out / "paraknow.json").read_text()) == {"version": 29}
    assert missing == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]  # no temporaries, no lock file


def test_atomic_directory_refuses_a_foreign_folder(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    for replaces in (None, "paraknow.json"):
        with pytest.raises(ParaknowError, match="non-empty directory"):
            with atomic_directory(foreign, replaces=replaces) as tmp:
                (tmp / "x").write_text("x")
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary left beside it
    with output_lock(foreign):
        assert lock_path(foreign).exists()
    assert not lock_path(foreign).exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_directory(empty) as tmp:  # an empty folder is fair game, marker or not
        (tmp / "made.txt").write_text("new")
    assert [p.name for p in empty.iterdir()] == ["made.txt"]


def test_gguf_memory_check_reads_the_header_before_dequantising(tmp_path, monkeypatch):
    path = tmp_path / "small.gguf"
    small_gguf(path)
    assert gguf_models.gguf_float32_bytes(path) == 50 * 16 * 4  # from the header's shapes alone
    monkeypatch.setattr(gguf_models, "available_memory_bytes", lambda device: 1000)
    with pytest.raises(ParaknowError, match=r"de-quantising small.gguf needs about .* GiB of RAM"):
        models.load_config(str(path))
    assert not [p for p in cache_dir("models").iterdir() if p.name.startswith("gguf-")]


def test_two_threads_writing_one_output_take_turns(tmp_path):
    """Two app sessions (threads of one server) exporting to one name: the lock serialises them."""
    out, inside, overlaps = tmp_path / "export", [], []

    def write(version):
        with output_lock(out):
            inside.append(version)
            overlaps.append(len(inside))
            with atomic_directory(out, replaces="paraknow.json") as tmp:
                atomic_write_json(tmp / "paraknow.json", {"version": version})
            inside.remove(version)

    threads = [threading.Thread(target=write, args=(v,)) for v in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [1] * 6  # never two writers inside at once
    assert json.loads((out / "paraknow.json").read_text())["version"] in range(6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_sigkilled_run_is_recognised_as_dead_and_a_rerun_says_how(files, tmp_path, capsys):
    """`train` killed with SIGKILL leaves status.json at `running`; the next `train --out` into it
    sees by the pid that the process is gone, settles the run as failed and says what to do."""
    import socket

    run = tmp_path / "run"
    argv = ["train", "--student", files["S"], "--data", files["D"], "--out", str(run), "--epochs", "100",
            "--batch", "2", "--micro-batch", "2", "--rank", "4", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-m", "paraknow", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while "step 2/" not in (line := proc.stdout.readline()):  # training has begun
        assert line and time.monotonic() < deadline
    proc.kill()
    proc.wait()
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "running" and status["pid"] == proc.pid and status["host"] == socket.gethostname()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"holds a run whose process (pid {proc.pid}) died without finishing; it is marked failed now" in err
    assert f"rm -r {run}" in err and len(err.splitlines()) == 1
    assert json.loads((run / "status.json").read_text())["state"] == "failed"
