"""Where paraknow keeps its runtime cache (converted models, sensitivity maps, exports, runs).

One setting: `$PARAKNOW_CACHE`. Unset, the cache is `cache/` at the project root when paraknow runs
from a checkout (the package folder's parent holds pyproject.toml and app.py), else the user's cache
folder (`$XDG_CACHE_HOME/paraknow`, by default `~/.cache/paraknow`).
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ParaknowError

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # paraknow/ (this file is paraknow/core/paths.py)


def checkout_root() -> Path | None:
    """The project folder when paraknow is imported from a source checkout (editable or not)."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() and (root / "app.py").is_file() else None


def default_cache_root() -> Path:
    root = checkout_root()
    if root is not None:
        return root / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "paraknow"


def cache_root() -> Path:
    """`$PARAKNOW_CACHE` if set, else `default_cache_root()`; created on first use."""
    root = Path(os.environ.get("PARAKNOW_CACHE") or default_cache_root()).expanduser()
    _make_folder(root)
    return root


def _make_folder(path: Path) -> None:
    """mkdir -p, or a ParaknowError naming the folder and what to do (the cache's folders only)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ParaknowError(f"the cache folder {path} is a file (PARAKNOW_CACHE={os.environ.get('PARAKNOW_CACHE', '')}):"
                            " point PARAKNOW_CACHE at a folder.") from None
    except OSError as exc:
        raise ParaknowError(f"cannot create the cache folder {path} ({exc.strerror or exc}): point PARAKNOW_CACHE at "
                            "a folder you can write.") from None


def cache_dir(kind: str) -> Path:
    """A sub-folder of the cache: `models`, `sensitivity`, `exports` or `runs`."""
    path = cache_root() / kind
    _make_folder(path)
    return path
