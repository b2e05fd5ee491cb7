"""The user cache where model files are assembled or converted, and the lock that keeps two processes from
building the same file at once. Nothing here ever contacts a model hub."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def cache_dir() -> Path:
    """Where converted weights live: $RLM_LOCAL_CACHE, else $XDG_CACHE_HOME/rlm-local, else ~/.cache/rlm-local."""
    if os.environ.get("RLM_LOCAL_CACHE"):
        return Path(os.environ["RLM_LOCAL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "rlm-local"


def set_offline() -> None:
    """Make every Hugging Face library refuse network access in this process (we never download weights)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    # Two processes converting at once would each spend 80 s and race on the rename; one waits instead.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
