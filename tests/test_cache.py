"""paraknow.core.cache and `python -m paraknow cache list|clear`: entries, last use, clearing that
spares entries in use, and the LRU size cap."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import SEED_RECORDS, TOKENIZER, marked_map_file, tiny_llama

from paraknow.cli import main
from paraknow.core import cache, jobdir
from paraknow.core.paths import cache_dir
from paraknow.transfer.sensitivity import SensitivityConfig
from paraknow.transfer.sensitivity_files import cached_sensitivity

ROOT = Path(__file__).resolve().parents[1]
DAY = 86400


def _entry(kind: str, name: str, size: int, age_days: float = 0.0) -> Path:
    """A cache entry of `size` bytes last used `age_days` ago (a file for sensitivity maps,
    a folder otherwise; a run gets a finished status)."""
    root = cache_dir(kind)
    if kind == "sensitivity":
        path = root / f"{name}.safetensors"
        marked_map_file(path, size)
        files = [path]
    else:
        path = root / name
        path.mkdir()
        (path / "weights.bin").write_bytes(b"w" * size)
        cache.mark_entry(path)
        files = [path / "weights.bin", path / cache.MARKER_FILE, path]
        if kind == "runs":
            (path / "spec.json").write_text(json.dumps({"student": "demo:student", "data": "task:arith"}))
            (path / "status.json").write_text(json.dumps({"state": "finished"}))
            files[:0] = [path / "spec.json", path / "status.json"]
    stamp = time.time() - age_days * DAY
    for file in files:
        os.utime(file, (stamp, stamp))
    return path


def test_list_shows_kind_size_and_last_use_oldest_first():
    _entry("sensitivity", "aaa", 1000, age_days=3)
    _entry("models", "gguf-123", 5000, age_days=10)
    _entry("exports", "my-export", 200, age_days=1)
    _entry("runs", "20260101-run", 300, age_days=0.5)
    (cache_dir("models") / "gguf_hashes.json").write_text("{}")  # bookkeeping, not an entry
    entries = cache.list_entries()
    assert [(e.kind, e.name) for e in entries] == [("models", "gguf-123"), ("sensitivity", "aaa.safetensors"),
                                                   ("exports", "my-export"), ("runs", "20260101-run")]
    sizes = {e.name: e.size for e in entries}
    marker_size = (cache_dir("models") / "gguf-123" / cache.MARKER_FILE).stat().st_size
    assert sizes["gguf-123"] == 5000 + marker_size and sizes["aaa.safetensors"] == 1000
    assert sizes["20260101-run"] > 300  # weights + spec + status
    assert abs(entries[0].last_used - (time.time() - 10 * DAY)) < 60
    assert [e.name for e in cache.list_entries("exports")] == ["my-export"]
    assert [e.name for e in cache.list_entries(older_than_days=2)] == ["gguf-123", "aaa.safetensors"]


def test_clear_by_kind_and_age_spares_entries_in_use(tmp_path):
    old = _entry("sensitivity", "old", 1000, age_days=40)
    new = _entry("sensitivity", "new", 1000, age_days=1)
    export = _entry("exports", "kept", 100, age_days=40)
    result = cache.clear("sensitivity", older_than_days=30)
    assert [e.name for e in result.removed] == ["old.safetensors"] and result.freed == 1000
    assert not old.exists() and new.exists() and export.exists()

    running = _entry("runs", "20260101-running", 100, age_days=40)
    (running / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid()}))
    queued = _entry("runs", "20260102-queued", 100, age_days=40)
    (queued / "status.json").write_text(json.dumps({"state": "queued"}))
    done = _entry("runs", "20260103-done", 100, age_days=40)
    result = cache.clear("runs")
    assert [e.name for e in result.removed] == ["20260103-done"]
    assert sorted(e.in_use for e in result.skipped) == ["run is queued", "run is running"]
    assert running.exists() and queued.exists() and not done.exists()


@pytest.mark.slow
def test_an_entry_locked_by_another_process_is_not_cleared():
    entry = _entry("models", "gguf-busy", 100, age_days=5)
    code = ("import sys, time; from paraknow.core.fsio import output_lock\n"
            "with output_lock(sys.argv[1], shared=True):\n    print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(entry)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        listed = cache.list_entries("models")
        assert listed[0].in_use == "locked (being written or read)"
        assert cache.clear("models").removed == [] and entry.exists()
    finally:
        holder.kill()
        holder.wait()
    assert [e.name for e in cache.clear("models").removed] == ["gguf-busy"]  # free once it is let go


def test_size_cap_evicts_least_recently_used_recomputable_entries(monkeypatch):
    monkeypatch.setenv(cache.MAX_GB_ENV, str(2500 / 2**30))  # 2500 bytes
    oldest = _entry("sensitivity", "oldest", 1000, age_days=9)
    middle = _entry("models", "gguf-middle", 1000, age_days=5)
    newest = _entry("sensitivity", "newest", 1000, age_days=1)
    export = _entry("exports", "results", 5000, age_days=20)  # results are never evicted
    cache.touch(oldest)  # used just now: the middle one is now the least recently used
    evicted = cache.enforce_cap(keep=newest)
    assert [e.name for e in evicted] == ["gguf-middle"]
    assert oldest.exists() and newest.exists() and export.exists() and not middle.exists()
    assert cache.enforce_cap() == []  # 2000 bytes: under the cap


def test_cap_never_evicts_the_entry_just_written_or_one_in_use(monkeypatch):
    monkeypatch.setenv(cache.MAX_GB_ENV, "0")
    just_written = _entry("sensitivity", "just-written", 1000, age_days=3)
    other = _entry("sensitivity", "other", 1000, age_days=1)
    assert [e.name for e in cache.enforce_cap(keep=just_written)] == ["other.safetensors"]
    assert just_written.exists() and not other.exists()


def test_cached_sensitivity_touches_on_read_and_applies_the_cap(monkeypatch):
    model = tiny_llama(layers=1, hidden=32, ffn=64, heads=2, kv_heads=1)
    config = SensitivityConfig(samples=2, max_length=64)
    stale = _entry("sensitivity", "stale", 10_000, age_days=30)
    monkeypatch.setenv(cache.MAX_GB_ENV, str(12_000 / 2**30))
    scores, _ = cached_sensitivity(model, TOKENIZER, SEED_RECORDS, config)
    assert not stale.exists()  # evicted to make room for the new map
    (written,) = cache.list_entries("sensitivity")
    old = time.time() - 5 * DAY
    os.utime(written.path, (old, old))
    again, _ = cached_sensitivity(model, TOKENIZER, SEED_RECORDS, config)
    assert all((again[k] == scores[k]).all() for k in scores)
    assert cache.list_entries("sensitivity")[0].last_used > time.time() - 60  # touched on read


def test_cap_setting_must_be_a_number(monkeypatch):
    monkeypatch.setenv(cache.MAX_GB_ENV, "lots")
    with pytest.raises(cache.ParaknowError, match="PARAKNOW_CACHE_MAX_GB"):
        cache.max_bytes()
    monkeypatch.setenv(cache.MAX_GB_ENV, "-1")
    with pytest.raises(cache.ParaknowError, match="at least 0"):
        cache.max_bytes()


def test_cache_command_lists_and_clears(capsys):
    _entry("sensitivity", "abc", 2048, age_days=8)
    _entry("exports", "exp", 100, age_days=1)
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["kind", "entry", "size", "last"]
    assert out[1].split()[:4] == ["sensitivity", "abc.safetensors", "2.0", "KB"]
    assert out[-1].startswith("2 entries")
    assert main(["cache", "clear", "--older-than", "7"]) == 0
    assert capsys.readouterr().out.startswith("removed 1 entries (2.0 KB)")
    assert [e.name for e in cache.list_entries()] == ["exp"]
    assert main(["cache", "clear", "--kind", "exports"]) == 0
    assert cache.list_entries() == []


def test_cache_clear_removes_finished_background_job_folders_but_not_a_running_one(capsys):
    from paraknow.core.processes import proc_start_time
    from paraknow.runs import background

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        states = {"finished": None, "failed": None, "stopped": None, "running": sleeper.pid,
                  "crashed": 2**22 + 1}  # `crashed`: a running status whose process is gone (reads failed)
        for name, pid in states.items():
            folder = background.job_dir("sensitivity", name)
            folder.mkdir(parents=True)
            cache.mark_entry(folder)  # as background.start does
            (folder / jobdir.PROGRESS_FILE).write_text('{"done": 1, "total": 2}\n')
            state = "running" if name == "crashed" else name
            (folder / jobdir.STATUS_FILE).write_text(json.dumps({"state": state, "pid": pid,
                                                                "pid_start": proc_start_time(pid)}))
        running = background.job_dir("sensitivity", "running")
        assert {e.name: e.in_use for e in cache.list_entries("jobs")}["sensitivity-running"] == "job is running"
        assert main(["cache", "clear"]) == 0
        assert "kept 1: jobs/sensitivity-running (job is running)" in capsys.readouterr().out
        assert sorted(p.name for p in background.jobs_root().iterdir()) == [running.name]
        assert background.read("sensitivity", "running").live and (running / jobdir.PROGRESS_FILE).is_file()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main(["cache", "clear", "--kind", "jobs"]) == 0  # its process is gone now: it reads failed
    assert list(background.jobs_root().iterdir()) == []


def test_a_cache_pointed_at_a_project_reports_what_paraknow_did_not_make_and_clears_none_of_it(tmp_path, monkeypatch,
                                                                                            capsys):
    project = tmp_path / "project"
    for relative in ("models/my-llama/weights.bin", "exports/my-adapter/a.txt", "jobs/notes/n.txt",
                     "runs/mine/spec.json", "sensitivity/scores.safetensors"):
        (project / relative).parent.mkdir(parents=True, exist_ok=True)
        (project / relative).write_text("mine")
    copied = project / "exports" / "renamed"  # a paraknow export copied under another name: its marker names the old
    copied.mkdir()
    (copied / cache.MARKER_FILE).write_text(json.dumps(cache.marker("exports", "original")))
    monkeypatch.setenv("PARAKNOW_CACHE", str(project))
    before = {str(p): p.read_bytes() if p.is_file() else None for p in project.rglob("*")}
    assert main(["cache", "list"]) == 0
    listed = capsys.readouterr().out
    assert listed.count(cache.UNMARKED) == 6
    assert main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("removed 0 entries (0 B); left 6 that paraknow did not make")
    assert "models/my-llama" in out and "jobs/notes" in out and "exports/renamed" in out
    assert {str(p): p.read_bytes() if p.is_file() else None for p in project.rglob("*")} == before
    monkeypatch.setenv(cache.MAX_GB_ENV, "0")
    assert cache.enforce_cap() == [] and project.joinpath("models/my-llama/weights.bin").exists()


def test_a_map_entry_that_does_not_match_its_key_or_its_checksum_is_computed_again():
    from paraknow.core.fsio import read_header_metadata
    from paraknow.transfer.sensitivity_files import cache_path, cached_sensitivity_hit, sensitivity_key

    teacher = tiny_llama(layers=2, hidden=32, ffn=64, heads=2, kv_heads=1, seed=1)
    student = tiny_llama(layers=1, hidden=32, ffn=64, heads=2, kv_heads=1, seed=2)
    config = SensitivityConfig(samples=2, max_length=64)
    truth, _, hit = cached_sensitivity_hit(teacher, TOKENIZER, SEED_RECORDS, config)
    assert not hit and cached_sensitivity_hit(teacher, TOKENIZER, SEED_RECORDS, config)[2]
    cached_sensitivity_hit(student, TOKENIZER, SEED_RECORDS, config)
    mine = cache_path(sensitivity_key(teacher, SEED_RECORDS, config))
    theirs = cache_path(sensitivity_key(student, SEED_RECORDS, config))
    blob, first_header = mine.read_bytes(), read_header_metadata(mine)
    for damage in (theirs.read_bytes(),  # the student's map under the teacher's key
                   blob[:-4] + bytes(4),  # the last score changed: the checksum fails
                   blob[: len(blob) // 2]):  # truncated
        mine.write_bytes(damage)
        scores, _, hit = cached_sensitivity_hit(teacher, TOKENIZER, SEED_RECORDS, config)
        assert not hit and sorted(scores) == sorted(truth) and all(torch.equal(scores[k], truth[k]) for k in truth)
        assert cached_sensitivity_hit(teacher, TOKENIZER, SEED_RECORDS, config)[2]  # replaced by a valid entry
        assert read_header_metadata(mine) == first_header


def test_a_read_only_cache_keeps_its_entries_and_says_why(monkeypatch, capsys):
    entry = _entry("runs", "20260101-done", 100, age_days=3)

    def refuse(*args):
        raise PermissionError(13, "Permission denied", str(entry))
    monkeypatch.setattr(cache.os, "replace", refuse)  # as a read-only file system (or folder) answers
    assert main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert "removed 0 entries" in out and "runs/20260101-done (cannot remove it: Permission denied)" in out
    assert entry.exists()
