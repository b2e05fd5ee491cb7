"""The reference library's callbacks, called at the same moments with the same arguments.

- ``on_iteration_start(depth, iteration)`` before each root turn of the completion's own run (not of its
  child runs), ``on_iteration_complete(depth, iteration, seconds)`` when that turn's code has run (or the
  turn failed); ``iteration`` counts from 1, as the turns are numbered to the model and in the trajectory.
- ``on_subcall_start(depth, model, prompt_preview)`` when ``rlm_query`` starts a child run (``depth`` is the
  child's, the preview the prompt's first 80 characters), ``on_subcall_complete(depth, model, seconds,
  error)`` when it ends (``error`` None for a final answer, else why it stopped). Plain ``llm_query`` calls
  and ``rlm_query`` at the depth limit start no child, so they call neither, as in the reference. Child runs
  call these too (the reference passes them down).
A callback that raises is logged and ignored: it must not end the run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import logger as _root_logger

logger = _root_logger.getChild("hooks")
PREVIEW_CHARS = 80


@dataclass(frozen=True)
class Hooks:
    on_iteration_start: Callable[[int, int], None] | None = None
    on_iteration_complete: Callable[[int, int, float], None] | None = None
    on_subcall_start: Callable[[int, str, str], None] | None = None
    on_subcall_complete: Callable[[int, str, float, str | None], None] | None = None

    def call(self, name: str, *args: Any) -> None:
        fn = getattr(self, name)
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            logger.warning("callback %s raised; ignored", name, exc_info=True)
