"""A full disk never leaves a truncated output: every JSON and text output, the run's status
rewritten each second included, goes through fsio's atomic writer; a write that fails half-way
(ENOSPC) leaves the previous file whole and no temporary beside it."""
from __future__ import annotations

import builtins
import errno
import json

import pytest

from paraknow.core import fsio
from paraknow.runs.rundir import StatusFile


class _FullDisk:
    """A file whose write puts down half the bytes, then finds the disk full (as ENOSPC does)."""

    def __init__(self, fh):
        self.fh = fh

    def write(self, data):
        self.fh.write(data[: len(data) // 2])
        self.fh.flush()
        raise OSError(errno.ENOSPC, "No space left on device", self.fh.name)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


@pytest.fixture
def full_disk(monkeypatch):
    def opener(file, mode="r", *args, **kwargs):
        fh = builtins.open(file, mode, *args, **kwargs)
        return _FullDisk(fh) if "w" in mode else fh

    monkeypatch.setattr(fsio, "open", opener, raising=False)  # fsio's own writes only


@pytest.mark.parametrize("writer", ["json", "text", "status-progress", "status-state"])
def test_a_write_that_finds_the_disk_full_leaves_the_previous_file_whole(tmp_path, full_disk, writer):
    path = tmp_path / ("status.json" if writer.startswith("status") else "out.json")
    previous = json.dumps({"state": "running", "step": 1}, indent=2) + "\n"
    path.write_text(previous)
    with pytest.raises(OSError) as info:
        if writer == "json":
            fsio.atomic_write_json(path, {"big": "x" * 10_000})
        elif writer == "text":
            fsio.atomic_write_text(path, "y" * 10_000)
        else:
            status = StatusFile(tmp_path)
            status._last = -1e9  # the throttle lets this progress update through
            status.update(force=writer == "status-state", step=2, loss=1.5)
    assert info.value.errno == errno.ENOSPC
    assert path.read_text() == previous  # the old version, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no half-written temporary left
