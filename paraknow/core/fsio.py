"""Atomic file output: write to a temporary sibling, then rename over the target.

A reader (another process, the UI polling a run) never sees a half-written artifact, and a
crash mid-write leaves the previous version in place. Directories are only ever replaced when
they are empty or carry the caller's marker file (a paraknow artifact), and writers of one
output are serialised by a lock file next to it.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from .errors import ParaknowError


def output_path(text: str | os.PathLike) -> Path:
    """An output path as given on the command line, absolute and normalised (`~` expanded,
    `.`/`..` resolved), so `--out .` names the current folder rather than an empty name."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(text))))


def _tmp_sibling(path: Path, is_dir: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    maker = tempfile.mkdtemp if is_dir else tempfile.mkstemp
    made = maker(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    if not is_dir:
        os.close(made[0])
        made = made[1]
    return Path(made)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """`path` holds `data` whole, or stays as it was: written to a temporary sibling that replaces it in
    one rename; a failed write (a full disk) removes the sibling. `fsync=False`: skip the flush to disk
    (a progress file rewritten every second: a crash may lose the newest version, never half of one)."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fsync)


def atomic_write_json(path: str | os.PathLike, obj, fsync: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", fsync)


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file` through a temp file; tensors are made contiguous on CPU."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                      metadata=metadata)
        except SafetensorError as exc:  # its I/O failures (a full disk) as the OSError they are
            code = re.search(r"code: (\d+)", str(exc))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


LOCK_WAIT_S = 60.0  # how long a writer waits for another writer of the same output
REFUSE_WAIT_S = 1.0  # writers that refuse rather than queue still ride out a momentary probe (is_locked)
# (thread, output path) -> [open lock file, depth]: re-entrant within one thread; two threads (two
# app sessions in one server) hold separate open files, so flock serialises them like processes
_held_locks: dict[tuple[int, Path], list] = {}


def lock_path(path: str | os.PathLike) -> Path:
    """The sibling lock file that serialises writers of `path`: `.<name>.lock` next to it."""
    path = Path(path).absolute()
    return path.with_name(f".{path.name}.lock")


def try_flock(fh, shared: bool = False) -> bool:
    """`flock` an open file without waiting (exclusive unless `shared`); False when another
    holder is in the way. Re-locking a file this descriptor already holds converts the lock."""
    try:
        fcntl.flock(fh.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _lock_once(lock: Path, shared: bool):
    """Open and flock the lock file; None if it is held (non-blocking). The file may have been
    unlinked by its previous holder between our open and our flock: then try again."""
    while True:
        fh = open(lock, "a+")
        if not try_flock(fh, shared):
            fh.close()
            return None
        try:
            same = os.stat(lock).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fh
        fh.close()


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, wait_s: float = LOCK_WAIT_S, shared: bool = False) -> Iterator[None]:
    """Hold the lock of an output path (an `fcntl.flock` on its sibling `.<name>.lock`).

    Writers take it exclusively, so two processes (or threads) writing one output run one after
    the other; `shared` readers only keep `paraknow cache clear` and eviction away. Waits up to
    `wait_s` seconds (0: do not wait), then raises ParaknowError. Re-entrant within one thread.
    The lock file is removed when the last holder lets go.
    """
    path = Path(path).absolute()
    key = (threading.get_ident(), path)
    held = _held_locks.get(key)
    if held is not None:
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while (fh := _lock_once(lock, shared)) is None:
        if time.monotonic() >= deadline:
            raise ParaknowError(f"another paraknow process is writing {path} (it holds {lock}); "
                                "wait for it to finish, or choose another output.")
        time.sleep(0.1)
    _held_locks[key] = [fh, 1]
    try:
        yield
    finally:
        del _held_locks[key]
        if not shared or try_flock(fh):  # a shared holder removes the file only when it was the last
            with contextlib.suppress(OSError):
                if os.stat(lock).st_ino == os.fstat(fh.fileno()).st_ino:
                    lock.unlink()
        fh.close()


def is_locked(path: str | os.PathLike) -> bool:
    """Whether some process (this one included) holds the lock of `path` right now."""
    path = Path(path).absolute()
    if any(held == path for _, held in list(_held_locks)):
        return True
    try:
        with open(lock_path(path)) as fh:  # never creates it: no lock file, no holder
            return not try_flock(fh)  # an exclusive probe fails while anyone holds it, shared or not
    except OSError:
        return False


def is_replaceable(path: str | os.PathLike, marker: str | None) -> bool:
    """Whether an atomic write may put a new directory at `path`: nothing there, an empty
    directory, or a directory holding `marker` (the file that proves paraknow made it)."""
    path = Path(path)
    if not path.exists():
        return True
    if not path.is_dir() or path.is_symlink():
        return False
    return not any(path.iterdir()) or (marker is not None and (path / marker).is_file())


def foreign_file(path: Path, owned: frozenset[str]) -> str | None:
    """The first thing under the directory `path` (relative, posix) that is not one of the `owned`
    relative paths a paraknow artifact consists of, or None when it holds only those."""
    for item in sorted(path.rglob("*")):
        relative = item.relative_to(path).as_posix()
        if relative not in owned:
            return relative
    return None


def check_replaceable(path: str | os.PathLike, marker: str | None, what: str = "output",
                      owned: frozenset[str] | None = None) -> None:
    """Raise ParaknowError unless `path` may receive a new directory (see `is_replaceable`); with
    `owned` (the relative paths the artifact consists of), a marked directory that also holds
    anything else is refused too, naming that file: replacing it would delete it."""
    path = Path(path)
    check_output_path(path)
    if is_replaceable(path, marker):
        if owned is not None and marker is not None and path.is_dir() and (foreign := foreign_file(path, owned)):
            raise ParaknowError(f"{path} holds {foreign}, which paraknow did not write; paraknow never deletes "
                                f"it: move it out, or choose a new {what} directory.")
        return
    if not path.is_dir():
        raise ParaknowError(f"{path} exists and is not a directory; choose a new {what} directory.")
    made_by_us = f" (it has no {marker}, so paraknow did not make it)" if marker else ""
    raise ParaknowError(f"{path} is a non-empty directory{made_by_us}; paraknow never replaces it: "
                        f"choose a new or empty {what} directory.")


SIBLING_NAME_EXTRA = 16  # a temporary sibling's name is the output's plus ".", ".XXXXXXXX.tmp" (or ".lock")


def check_output_path(path: str | os.PathLike) -> None:
    """Raise ParaknowError when an output `path` has a name too long for the file system (its own
    name needs room for the temporary sibling and lock beside it) or is a symbolic link (to anything,
    or dangling: paraknow replaces its outputs by rename, which would write beside the link's target)."""
    path = Path(path)
    _check_name_lengths(path)
    if path.is_symlink():
        target = os.readlink(path)
        state = "" if path.exists() else ", which does not exist"
        raise ParaknowError(f"{path} is a symbolic link to {target}{state}; paraknow writes only to real paths: "
                            "give the real path, or a new name.")


def _check_name_lengths(path: Path) -> None:
    """Every name in `path` fits the file system (checked before anything stats it: a stat of a too
    long name fails too), its last one with room for the temporary sibling and lock beside it."""
    try:
        name_max = os.pathconf(os.path.dirname(os.path.abspath(path.anchor or ".")), "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    for i, name in enumerate(path.parts):
        limit = name_max - (SIBLING_NAME_EXTRA if i == len(path.parts) - 1 else 0)
        if len(os.fsencode(name)) > limit:
            raise ParaknowError(f"the name {name[:24]}... is {len(os.fsencode(name))} bytes long, more than the "
                                f"{limit} the file system leaves for it: choose a shorter name.")


def check_writable_parent(path: str | os.PathLike) -> None:
    """Raise ParaknowError unless `path` can be created: names that fit the file system, not a
    symbolic link, and a nearest existing ancestor that is a writable directory (checked before any
    long computation)."""
    path = Path(path).expanduser().absolute()
    check_output_path(path)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ParaknowError(f"cannot create {path}: {parent} is not a directory.")
    try:  # a real probe: permissions, ACLs and read-only file systems all show here
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as exc:
        raise ParaknowError(f"cannot write to {parent} ({exc.strerror or exc}); choose an output you can write.") from None


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux renameat2(RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, replaces: str | None = None,
                     wait_s: float = LOCK_WAIT_S, owned: frozenset[str] | None = None) -> Iterator[Path]:
    """Yield a temporary directory; on success it becomes `path`, on error it vanishes.

    An existing `path` is replaced only when it is empty or holds the file named `replaces`
    (e.g. `paraknow.json`: proof that it is a paraknow artifact the caller may replace); any
    other directory or file there raises ParaknowError and is left untouched. Writers of one
    `path` are serialised by `output_lock`, and the swap is one atomic rename exchange where
    the kernel supports it, so readers never see `path` missing. With `owned` (see
    `check_replaceable`), a marked directory holding anything else is refused as well.
    """
    path = Path(path)
    check_replaceable(path, replaces, owned=owned)  # before the caller does any work
    tmp = _tmp_sibling(path, is_dir=True)
    try:
        yield tmp
        with output_lock(path, wait_s):
            check_replaceable(path, replaces, owned=owned)  # again: another writer may have finished meanwhile
            if not path.exists():
                os.replace(tmp, path)
            elif _exchange(tmp, path):
                shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous version
            else:
                old = _tmp_sibling(path, is_dir=True)
                os.rmdir(old)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json_object(path: str | os.PathLike, advice: str) -> dict:
    """The JSON object in a file; ParaknowError naming the file and `advice` (what to do) when
    it is missing, unreadable, not JSON, nested absurdly deep or not an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParaknowError(f"{path} is missing; {advice}.") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise ParaknowError(f"{path} is unreadable ({type(exc).__name__}); {advice}.") from None
    if not isinstance(data, dict):
        raise ParaknowError(f"{path} holds a JSON {type(data).__name__}, not an object; {advice}.")
    return data


MAX_HEADER_BYTES = 100 * 2**20  # a safetensors header larger than this is not a file paraknow wrote


def read_header_metadata(path: str | os.PathLike) -> dict:
    """The `__metadata__` of a safetensors file read from its header alone ({} when the file is
    missing, not safetensors, or has none): cheap enough to ask of every file in a folder."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 2 <= size <= MAX_HEADER_BYTES:
                return {}
            header = json.loads(fh.read(size))
    except (OSError, ValueError, RecursionError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def zip_folder(directory: str | os.PathLike) -> bytes:
    """A folder as zip bytes, every regular file under `<folder name>/` (for a download button).
    Symbolic links are never followed nor packed: a link planted in an export cannot pull in a
    file from elsewhere on the machine."""
    directory = Path(directory)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        files = [Path(folder, name) for folder, _, names in os.walk(directory) for name in names]  # no link followed
        for path in sorted(files):
            if path.is_file() and not path.is_symlink():
                zf.write(path, f"{directory.name}/{path.relative_to(directory).as_posix()}")
    return buffer.getvalue()
