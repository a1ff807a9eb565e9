"""The runtime cache under `cache_root()`: what is in it, clearing it, and a size cap.

Six kinds of entries (`python -m paraknow cache list|clear [--kind K] [--older-than DAYS]`):

  sensitivity/<key>.safetensors   sensitivity maps, keyed by content (recomputable)
  models/<name>/                  models converted from GGUF (recomputable)
  distill/<key>/                  a teacher's greedy completions of a dataset, keyed by content
                                  (sequence KD, paraknow.runs.distill_data; recomputable)
  exports/<name>/                 exports made by the app (your results)
  runs/<id>/                      fine-tuning runs (your results)
  jobs/<kind>-<key>/              the folders of the pages' background jobs (paraknow.runs.background:
                                  spec, status, progress, log; a map or an export a job made is in
                                  its own kind, a similarity or verification result is computed
                                  again once its folder is cleared)

The cache owns only what it made: every entry carries a marker written by paraknow when it made
it (`.paraknow-entry.json` in a folder, the `paraknow_entry` field of a sensitivity map's
safetensors header): its kind, its key (the entry's name) and the marker version. Anything in a
kind's folder without a matching marker (copied in by hand, `PARAKNOW_CACHE` pointed at a project
folder, or written by a paraknow older than the markers) is listed as *unmarked* and never removed,
by `cache clear` or by the size cap: remove it yourself.

An entry's *last used* time is the newest modification time inside it; readers `touch` an
entry when they use it. An entry is *in use* while a process holds its lock
(`fsio.output_lock`: being written, or read by `load_model`), a run while it is queued or
running, and a job while it is running; in-use entries are never removed.

The size cap (`PARAKNOW_CACHE_MAX_GB`, default 20) bounds the recomputable kinds: whenever a
sensitivity map or a converted model is written, the least recently used ones are evicted
until they fit. Exports, runs and jobs are only removed by an explicit `cache clear`.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ParaknowError
from .fsio import atomic_write_json, is_locked, output_lock, read_header_metadata, sha256_file
from .jobdir import BUSY_STATES, read_status
from .paths import cache_root
from .validate import check_number

KINDS = ("sensitivity", "models", "distill", "exports", "runs", "jobs")
EVICTABLE_KINDS = ("sensitivity", "models", "distill")
MAX_GB_ENV = "PARAKNOW_CACHE_MAX_GB"
DEFAULT_MAX_GB = 20.0
_NOT_ENTRIES = {"gguf_hashes.json", "worker.log"}  # bookkeeping files beside the entries
MARKER_FILE = ".paraknow-entry.json"  # in every folder entry: {"kind", "key", "version"}
MARKER_FIELD = "paraknow_entry"  # the same object in a sensitivity map's safetensors header
MARKER_VERSION = 1
UNMARKED = "unmarked: paraknow did not make it (no marker); remove it yourself"


@dataclass
class CacheEntry:
    kind: str
    name: str
    path: Path
    size: int  # bytes
    last_used: float  # unix seconds
    in_use: str | None = None  # why it cannot be removed now, or None

    def to_row(self) -> dict:
        return {"kind": self.kind, "entry": self.name, "size": self.size,
                "last_used": time.strftime("%Y-%m-%d %H:%M", time.localtime(self.last_used)),
                "in_use": self.in_use or ""}


@dataclass
class ClearResult:
    removed: list[CacheEntry] = field(default_factory=list)
    skipped: list[CacheEntry] = field(default_factory=list)  # in use: left in place

    @property
    def freed(self) -> int:
        return sum(e.size for e in self.removed)


def fmt_bytes(n: float) -> str:
    """1536 -> '1.5 KB'."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def touch(path) -> None:
    """Mark a cache entry as used now (its modification time; the cache's notion of last use)."""
    try:
        os.utime(path)
    except OSError:
        pass  # read-only or vanished: the entry simply looks older


def _size_and_last_used(path: Path) -> tuple[int, float]:
    """Total bytes of the files in an entry and the newest modification time (entry included)."""
    try:
        top = path.stat()
    except OSError:
        return 0, 0.0
    if not path.is_dir():
        return top.st_size, top.st_mtime
    size, newest = 0, top.st_mtime
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                stat = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            size += stat.st_size
            newest = max(newest, stat.st_mtime)
    return size, newest


def kind_of(path) -> str | None:
    """The cache kind whose folder holds `path` directly (None when `path` is not a cache entry's place)."""
    parent = os.path.realpath(Path(path).absolute().parent)
    root = os.path.realpath(cache_root())
    return next((k for k in KINDS if parent == os.path.join(root, k)), None)


def marker(kind: str, key: str, **extra) -> dict:
    """The marker object of an entry paraknow makes (`extra`: e.g. a sensitivity map's checksum)."""
    return {"kind": kind, "key": key, "version": MARKER_VERSION, **extra}


def mark_entry(directory, final=None, checksum: bool = False) -> None:
    """Write the marker into `directory` when `final` (default: `directory` itself; the place a
    temporary folder becomes) is a cache entry's place; elsewhere (an --out of the user's) nothing.
    `checksum`: list every file already in `directory` with its size, modification time and sha256
    (`file_listing`), so `is_intact` can tell a damaged entry (write it once the files are in place)."""
    final = Path(final if final is not None else directory)
    kind = kind_of(final)
    if kind is not None:
        extra = {"files": file_listing(directory)} if checksum else {}
        atomic_write_json(Path(directory) / MARKER_FILE, marker(kind, final.name, **extra))


def file_listing(directory) -> dict:
    """{relative path: {"size", "mtime_ns", "sha256"}} of every file under `directory` but its marker."""
    directory = Path(directory)
    listing = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MARKER_FILE):
        stat = path.stat()
        listing[path.relative_to(directory).as_posix()] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                                            "sha256": sha256_file(path)}
    return listing


def is_intact(directory) -> bool:
    """Whether a folder entry marked with a file listing still holds exactly those files with their
    content: sizes compared always, a file's sha256 read again only when its modification time
    changed (so the check is cheap on every use). True for an entry whose marker lists no files."""
    directory = Path(directory)
    listing = (read_marker(directory) or {}).get("files")
    if listing is None:
        return True
    if not isinstance(listing, dict) or set(listing) != set(file_listing_names(directory)):
        return False
    for name, want in listing.items():
        try:
            stat = (directory / name).stat()
        except OSError:
            return False
        if not isinstance(want, dict) or stat.st_size != want.get("size"):
            return False
        if stat.st_mtime_ns != want.get("mtime_ns") and sha256_file(directory / name) != want.get("sha256"):
            return False
    return True


def file_listing_names(directory) -> list[str]:
    """The relative paths `file_listing` would list (no hashing)."""
    directory = Path(directory)
    return [p.relative_to(directory).as_posix() for p in directory.rglob("*")
            if p.is_file() and p.name != MARKER_FILE]


def read_marker(path) -> dict | None:
    """The marker of an entry (folder: its marker file; sensitivity map: its header field), or None."""
    path = Path(path)
    if path.is_dir():
        from .jobdir import read_json

        return read_json(path / MARKER_FILE)
    try:
        found = json.loads(read_header_metadata(path).get(MARKER_FIELD, "null"))
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def is_marked(kind: str, path) -> bool:
    """Whether paraknow made this entry: its marker names this kind and this entry's key."""
    found = read_marker(path)
    key = Path(path).stem if kind == "sensitivity" else Path(path).name
    return bool(found) and found.get("kind") == kind and found.get("key") == key


def _is_entry(kind: str, path: Path) -> bool:
    """Whether `path` is an entry's place (marked or not); dot files (locks, temporaries) and
    bookkeeping files are not."""
    return not (path.name.startswith(".") or path.name in _NOT_ENTRIES)


def _busy_run(kind: str, path: Path) -> str | None:
    """'run is queued|running' / 'job is running' for a run or background job that is (both
    liveness-checked by the job substrate: a dead process does not keep its entry), else None."""
    if kind not in ("runs", "jobs"):
        return None
    state = read_status(path).get("state")
    return f"{kind[:-1]} is {state}" if state in BUSY_STATES else None


def _in_use(kind: str, path: Path) -> str | None:
    if not is_marked(kind, path):
        return UNMARKED
    if is_locked(path):
        return "locked (being written or read)"
    return _busy_run(kind, path)


def _check_kinds(kinds) -> tuple[str, ...]:
    if kinds is None:
        return KINDS
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ParaknowError(f"unknown cache kind '{unknown[0]}'; use one of {', '.join(KINDS)}.")
    return kinds


def list_entries(kinds=None, older_than_days: float | None = None) -> list[CacheEntry]:
    """Entries of the given kinds (all by default), least recently used first; with
    `older_than_days`, only those not used for that many days."""
    kinds = _check_kinds(kinds)
    cutoff = None
    if older_than_days is not None:
        check_number("older_than", older_than_days, minimum=0)
        cutoff = time.time() - older_than_days * 86400
    root = cache_root()
    entries = []
    for kind in kinds:
        folder = root / kind
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if not _is_entry(kind, path):
                continue
            size, last_used = _size_and_last_used(path)
            if cutoff is not None and last_used >= cutoff:
                continue
            entries.append(CacheEntry(kind, path.name, path, size, last_used, _in_use(kind, path)))
    return sorted(entries, key=lambda e: e.last_used)


def remove_entry(entry: CacheEntry) -> bool:
    """Remove one entry unless it is in use; True when removed. Takes the entry's lock first
    (without waiting), so a writer or reader that holds it keeps its entry."""
    try:
        with output_lock(entry.path, wait_s=0):
            if not is_marked(entry.kind, entry.path) or _busy_run(entry.kind, entry.path):
                return False
            if entry.path.is_dir():
                doomed = entry.path.with_name(f".{entry.path.name}.removing")
                os.replace(entry.path, doomed)  # vanishes at once, whole; then the slow part
                shutil.rmtree(doomed, ignore_errors=True)
            else:
                entry.path.unlink(missing_ok=True)
    except ParaknowError:  # another process holds the lock
        return False
    except OSError as exc:  # a read-only cache: the entry stays, and says why
        entry.in_use = f"cannot remove it: {exc.strerror or exc}"
        return False
    return True


def clear(kinds=None, older_than_days: float | None = None) -> ClearResult:
    """Remove every entry of the given kinds (older than `older_than_days`, when given) that is
    not in use."""
    result = ClearResult()
    for entry in list_entries(kinds, older_than_days):
        if entry.in_use is None and remove_entry(entry):
            result.removed.append(entry)
        else:
            result.skipped.append(entry)
    return result


def max_bytes() -> int:
    """The size cap of the recomputable entries, from PARAKNOW_CACHE_MAX_GB (default 20)."""
    text = os.environ.get(MAX_GB_ENV, "").strip()
    if not text:
        return int(DEFAULT_MAX_GB * 2**30)
    try:
        value = float(text)
    except ValueError:
        raise ParaknowError(f"{MAX_GB_ENV}={text!r} is not a number; set it to the cache size cap in GB.") from None
    check_number(MAX_GB_ENV, value, minimum=0)
    return int(value * 2**30)


def enforce_cap(keep=None) -> list[CacheEntry]:
    """Evict the least recently used recomputable entries until they fit under `max_bytes()`.
    Never evicts `keep` (the entry just written) or an entry in use. Returns what was evicted."""
    cap = max_bytes()
    entries = list_entries(EVICTABLE_KINDS)
    total = sum(e.size for e in entries)
    keep = Path(keep).absolute() if keep is not None else None
    evicted = []
    for entry in entries:  # least recently used first
        if total <= cap:
            break
        if entry.in_use is not None or entry.path.absolute() == keep:
            continue
        if remove_entry(entry):
            evicted.append(entry)
            total -= entry.size
    return evicted
