"""The process-wide scheduler registry: one Scheduler per engine, shared by everyone who uses the engine.

This is rlm-local's one piece of global mutable state, on purpose: the scheduler is where concurrent
callers of an engine are batched together and where the engine gets its single caller thread, so every
RLM and the server on one engine must find the same scheduler. Users ``acquire`` it (created on first
use, with that user's settings) and ``release`` it; the last release closes it (never the engine: who
created an engine closes it).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ..engines.base import Engine
from ..errors import logger as _root_logger
from .scheduler import Scheduler

logger = _root_logger.getChild("schedulers")


@dataclass
class _Entry:
    engine: Engine  # held so that id(engine) cannot be reused while the entry exists
    scheduler: Scheduler
    settings: dict[str, Any]
    users: int = 0


_lock = threading.Lock()
_entries: dict[int, _Entry] = {}


def acquire(engine: Engine, **settings: Any) -> Scheduler:
    """The engine's shared scheduler, created with ``settings`` (Scheduler's keyword arguments) by its
    first user; later users with different settings share the first one's (and a warning is logged)."""
    with _lock:
        entry = _entries.get(id(engine))
        if entry is None or entry.engine is not engine:
            entry = _entries[id(engine)] = _Entry(engine, Scheduler(engine, **settings), dict(settings))
        elif settings and settings != entry.settings:
            logger.warning(
                "engine %s already has a scheduler with %s; %s ignored",
                engine.model_name or engine.backend,
                entry.settings,
                settings,
            )
        entry.users += 1
        return entry.scheduler


def release(engine: Engine) -> None:
    """One user is done with the engine's scheduler; the last one closes it."""
    with _lock:
        entry = _entries.get(id(engine))
        if entry is None or entry.engine is not engine:
            return
        entry.users -= 1
        if entry.users > 0:
            return
        del _entries[id(engine)]
    entry.scheduler.close()


def users(engine: Engine) -> int:
    """How many users hold the engine's scheduler now (0: none exists)."""
    with _lock:
        entry = _entries.get(id(engine))
        return entry.users if entry is not None and entry.engine is engine else 0
