"""An engine made of a reference-library client: any object with ``completion(prompt) -> str``.

The reference library talks to models through clients (``BaseLM``: ``completion(messages_or_text)``,
``get_last_usage()``, ``model_name``); code written for it, its tests' scripted mocks included, can hand
such a client to rlm-local (``RLM(engine=client)``, or a ``get_client`` that returns one) and the loop drives
it like any engine: a chat request passes its message list, a raw prompt its text. The client is called
once per request, one at a time (clients are not assumed thread-safe). Usage comes from
``get_last_usage()`` when it reports token counts, else from a ~4 characters/token estimate.
"""

from __future__ import annotations

import threading
from typing import Any

from .base import Engine, Request, Result, Usage


def is_client(obj: object) -> bool:
    """A reference-style client: not one of our engines, but something with a callable ``completion``."""
    return not isinstance(obj, Engine) and callable(getattr(obj, "completion", None))


class ClientEngine(Engine):
    backend = "client"

    def __init__(self, client: Any, model_name: str | None = None, context_length: int = 0) -> None:
        self.client = client
        own = getattr(client, "model_name", None)
        self.model_name = model_name or (own if isinstance(own, str) else "") or type(client).__name__
        self.context_length = context_length
        self._lock = threading.Lock()

    def generate(self, requests: list[Request]) -> list[Result]:
        with self._lock:
            return [self._one(r) for r in requests]

    def _one(self, request: Request) -> Result:
        payload: Any = [dict(m) for m in request.messages] if request.messages is not None else request.prompt
        try:
            text = self.client.completion(payload)
        except Exception as exc:  # a per-request failure, like any engine's
            return Result.failed(f"client {self.model_name}: {type(exc).__name__}: {exc}")
        if not isinstance(text, str):
            return Result.failed(f"client {self.model_name}: completion() returned {type(text).__name__}, not str")
        return Result(text=text, usage=self._usage(request, text))

    def _usage(self, request: Request, text: str) -> Usage:
        reported = getattr(self.client, "get_last_usage", None)
        last = reported() if callable(reported) else None
        tokens_in, tokens_out = getattr(last, "total_input_tokens", None), getattr(last, "total_output_tokens", None)
        if isinstance(tokens_in, int) and isinstance(tokens_out, int):
            return Usage(calls=1, prompt_tokens=tokens_in, cached_tokens=None, completion_tokens=tokens_out)
        return Usage(
            calls=1,
            prompt_tokens=self.count_tokens(self.render(request)),
            cached_tokens=None,
            completion_tokens=self.count_tokens(text),
        )
