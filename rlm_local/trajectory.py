"""The run's story as JSONL: one event a line, appended as it happens, readable while the run goes on.

Events carry what happened (turns, cells, sub-calls, the final answer), never the context itself: the
reference library copied the whole context into every event and its logs grew to gigabytes. Long text
fields are clipped to ``max_field_chars`` with a note of the full length.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any, TextIO

from .engines.base import Usage



def clip(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... [clipped: {len(text):,} characters in all]"


class Trajectory:
    """Collects events in memory (``events``) and, when a path is given, appends them to a JSONL file.
    Thread-safe: concurrent child runs write to the same trajectory."""

    def __init__(self, path: str | Path | None = None, max_field_chars: int = 8000,
                 listeners: list[Callable[[dict[str, Any]], None]] | None = None,
                 lock: threading.Lock | None = None, **common: Any) -> None:
        self.path = Path(path) if path else None
        self.max_field_chars = max_field_chars
        self.events: list[dict[str, Any]] = []
        self.listeners = list(listeners or [])
        self.common = common  # fields stamped on every event, e.g. run_id
        # Several runs may append to one file: they share the caller's lock so lines never interleave.
        self._lock = lock or threading.Lock()
        self._file: TextIO | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")

    def log(self, event: str, **fields: Any) -> dict[str, Any]:
        record: dict[str, Any] = {"event": event, "time": round(time.time(), 3), **self.common}
        for key, value in fields.items():
            if isinstance(value, Usage):
                value = value.to_dict()
            elif isinstance(value, str):
                value = clip(value, self.max_field_chars)
            elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                value = [clip(v, self.max_field_chars) for v in value]
            record[key] = value
        with self._lock:
            self.events.append(record)
            if self._file is not None:
                self._file.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                self._file.flush()
        for listener in self.listeners:
            listener(record)
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
