"""A deterministic engine for tests and demos of the loop: replies come from a list or a function.

``replies`` is a list of strings, consumed in order across all calls (the last one repeats when the
list runs out would hide bugs, so running out is an error result instead), or a callable
``fn(request) -> str`` that sees each request and decides. A reply function that is still running at
the scheduler's deadline is abandoned (left to finish in its own thread) and the request fails with its
prompt counted, as a real engine cuts a generation short.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from ..errors import InputTypeError
from .base import Engine, Request, Result, Usage


class ScriptedEngine(Engine):
    backend = "scripted"
    supports_deadline = True

    def __init__(
        self,
        replies: Sequence[str] | Callable[[Request], str],
        model_name: str = "scripted",
        prompt_format: str = "chat",
        context_length: int = 32768,
    ) -> None:
        if not callable(replies) and not (isinstance(replies, Sequence) and all(isinstance(r, str) for r in replies)):
            raise InputTypeError("scripted backend needs backend_kwargs={'replies': [str, ...]} or a callable")
        self._replies = replies if callable(replies) else list(replies)
        self._next = 0
        self._lock = threading.Lock()
        self.model_name = model_name
        self.prompt_format = prompt_format  # type: ignore[assignment]
        self.context_length = context_length
        self.requests: list[Request] = []  # every request seen, in order (tests inspect this)
        self.batches: list[int] = []  # size of every generate() call

    def generate(self, requests: list[Request], deadline: float | None = None) -> list[Result]:
        with self._lock:
            self.batches.append(len(requests))
            return [self._one(r, deadline) for r in requests]

    def _one(self, request: Request, deadline: float | None) -> Result:
        self.requests.append(request)
        prompt_tokens = self.count_tokens(self.rendered(request))
        if callable(self._replies):
            outcome = self._call(request, deadline)
            if isinstance(outcome, Exception):  # the script failing is a per-request error, like a real engine
                return Result.failed(f"scripted reply function raised {type(outcome).__name__}: {outcome}")
            if outcome is None:
                return Result(
                    text="",
                    finish_reason="error",
                    error="scripted: stopped at the deadline",
                    usage=Usage(calls=1, prompt_tokens=prompt_tokens, cached_tokens=0),
                )
            text = outcome
        elif self._next < len(self._replies):
            text = self._replies[self._next]
            self._next += 1
        else:
            return Result.failed("scripted engine ran out of replies")
        stops = [text.find(s) for s in request.sampling.stop if s in text]
        if stops:
            text = text[: min(stops)]
        usage = Usage(calls=1, prompt_tokens=prompt_tokens, cached_tokens=0, completion_tokens=self.count_tokens(text))
        return Result(text=text, finish_reason="stop", usage=usage)

    def _call(self, request: Request, deadline: float | None) -> str | Exception | None:
        """The reply function's text or exception; None when it was still running at ``deadline``."""
        box: list[str | Exception] = []

        def work() -> None:
            try:
                box.append(self._replies(request))  # type: ignore[operator]
            except Exception as exc:
                box.append(exc)

        if deadline is None:
            work()
        else:
            worker = threading.Thread(target=work, name="scripted-reply", daemon=True)
            worker.start()
            worker.join(max(0.0, deadline - time.monotonic()))
        return box[0] if box else None
