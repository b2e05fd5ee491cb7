"""A deterministic engine for tests and demos of the loop: replies come from a list or a function.

``replies`` is a list of strings, consumed in order across all calls (the last one repeats when the
list runs out would hide bugs, so running out is an error result instead), or a callable
``fn(request) -> str`` that sees each request and decides.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from ..errors import InputTypeError
from .base import Engine, Request, Result, Usage


class ScriptedEngine(Engine):
    backend = "scripted"

    def __init__(self, replies: Sequence[str] | Callable[[Request], str], model_name: str = "scripted",
                 prompt_format: str = "chat", context_length: int = 32768) -> None:
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

    def generate(self, requests: list[Request]) -> list[Result]:
        with self._lock:
            self.batches.append(len(requests))
            return [self._one(r) for r in requests]

    def _one(self, request: Request) -> Result:
        self.requests.append(request)
        if callable(self._replies):
            try:
                text = self._replies(request)
            except Exception as exc:  # the script itself failing is a per-request error, like a real engine
                return Result.failed(f"scripted reply function raised {type(exc).__name__}: {exc}")
        elif self._next < len(self._replies):
            text = self._replies[self._next]
            self._next += 1
        else:
            return Result.failed("scripted engine ran out of replies")
        stops = [text.find(s) for s in request.sampling.stop if s in text]
        if stops:
            text = text[: min(stops)]
        prompt_tokens = self.count_tokens(self.render(request))
        usage = Usage(calls=1, prompt_tokens=prompt_tokens, cached_tokens=0, completion_tokens=self.count_tokens(text))
        return Result(text=text, finish_reason="stop", usage=usage)
