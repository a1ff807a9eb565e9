"""Where paraknow keeps its runtime cache (converted models, sensitivity maps, exports, runs)."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def cache_root() -> Path:
    """`$PARAKNOW_CACHE` if set, else `./cache` under the current directory."""
    root = Path(os.environ.get("PARAKNOW_CACHE") or Path.cwd() / "cache")
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_dir(kind: str) -> Path:
    """A sub-folder of the cache: `models`, `sensitivity`, `exports` or `runs`."""
    path = cache_root() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
