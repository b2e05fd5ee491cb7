"""The run's story as JSONL: one event a line, appended as it happens, readable while the run goes on.

Events are the typed records of events.py (their ``to_dict()`` is the line schema). They carry what
happened (turns, cells, sub-calls, the final answer), never the context itself: the reference library
copied the whole context into every event and its logs grew to gigabytes. Long text fields are clipped to
``max_field_chars`` with a note of the full length.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from .events import Event, clip

__all__ = ["Trajectory", "clip", "context_digest", "read_trajectory"]


class Trajectory:
    """Collects events in memory (``events``, as dicts) and, when a path is given, appends them to a JSONL
    file; ``listeners`` get each typed event as it happens. Thread-safe: child runs log concurrently."""

    def __init__(
        self,
        path: str | Path | None = None,
        max_field_chars: int = 8000,
        listeners: list[Callable[[Event], None]] | None = None,
        lock: threading.Lock | None = None,
        run_id: str = "",
    ) -> None:
        self.path = Path(path) if path else None
        self.max_field_chars = max_field_chars
        self.events: list[dict[str, Any]] = []
        self.listeners = list(listeners or [])
        self.run_id = run_id  # stamped on every event
        # Several runs may append to one file: they share the caller's lock so lines never interleave.
        self._lock = lock or threading.Lock()
        self._file: TextIO | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # A lone surrogate (a file read with surrogateescape, or model output) is written as its JSON escape
            # (\udXXX): the file stays valid UTF-8 and json.loads gives the same text back.
            self._file = open(self.path, "a", encoding="utf-8", errors="backslashreplace")

    def log(self, event: Event) -> dict[str, Any]:
        event.run_id = self.run_id
        record = event.to_dict(self.max_field_chars)
        with self._lock:
            self.events.append(record)
            if self._file is not None:
                self._file.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                self._file.flush()
        for listener in self.listeners:
            listener(event)
        return record

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_trajectory(path: str | Path) -> list[dict[str, Any]]:
    """Load a trajectory file written by :class:`Trajectory` (for analysis and tests)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def context_digest(context: str | list[str] | dict[str, str]) -> str:
    """The sha256 of a context as given (a str's UTF-8, else its JSON): replay checks the one it is handed."""
    data = context if isinstance(context, str) else json.dumps(context, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()
