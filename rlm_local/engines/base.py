"""The one interface every inference engine implements: a batch of requests in, a batch of results out.

A request is either chat messages or a raw prompt, plus sampling settings. Engines own prompt rendering
(chat templates), tokenisation and decoding; everything above them (scheduler, loop) only sees text.
Errors are per request: one bad request yields a result with ``error`` set, never an exception that
loses its siblings' answers.
"""

from __future__ import annotations

import abc
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from ..errors import EngineError as EngineError  # re-exported: its old home
from ..errors import input_errors
from .tokens import plain_turns

T = TypeVar("T")
RENDER_MEMO_SIZE = 256  # requests whose rendered text an engine remembers (a few batches' worth)

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "error"]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 512
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # A GBNF grammar the reply must follow (llama.cpp grammars, vLLM structured outputs). Engines that cannot
    # constrain (``Engine.supports_grammar`` False) never receive one: the loop drops it with a logged note.
    grammar: str | None = None

    @input_errors
    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ValueError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be a number from 0 to 1, got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise TypeError(f"seed must be an int or None, got {self.seed!r}")
        if isinstance(self.stop, str) or not all(isinstance(x, str) for x in self.stop):
            raise TypeError(f"stop must be a sequence of str, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Request:
    """Exactly one of ``messages`` (chat) or ``prompt`` (raw completion) is set.

    ``session`` names the RLM run the request belongs to (the root run's id, shared by its child runs), so a
    router in front of several servers can keep one run on one server. It is routing metadata only: it is
    not part of ``key()``, equality or hashing, so identical requests of different runs still share one
    answer through the scheduler's memo."""

    messages: tuple[dict[str, str], ...] | None = None
    prompt: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    session: str | None = field(default=None, compare=False)

    @input_errors
    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a Request needs exactly one of messages or prompt")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise TypeError(f"prompt must be a str, got {type(self.prompt).__name__}")
        if not isinstance(self.sampling, SamplingParams):
            raise TypeError(f"sampling must be a SamplingParams, got {type(self.sampling).__name__}")
        if self.messages is not None:
            # Accept lists from callers but store an immutable, hashable form (memo keys, grouping).
            object.__setattr__(self, "messages", tuple(dict(m) for m in self.messages))
            for m in self.messages:
                if m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
                    raise ValueError(f"bad chat message: {m!r}")

    @classmethod
    @input_errors
    def chat(cls, messages: list[dict[str, str]], **sampling: object) -> Request:
        return cls(messages=tuple(messages), sampling=SamplingParams(**sampling))  # type: ignore[arg-type]

    @classmethod
    @input_errors
    def completion(cls, prompt: str, **sampling: object) -> Request:
        return cls(prompt=prompt, sampling=SamplingParams(**sampling))  # type: ignore[arg-type]

    def with_session(self, session: str | None) -> Request:
        """This request tagged with ``session`` (itself when already tagged so)."""
        return self if session == self.session else replace(self, session=session)

    def key(self) -> tuple[object, ...]:
        """A hashable identity: equal keys mean the same request (used for de-duplication)."""
        msgs = tuple((m["role"], m["content"]) for m in self.messages) if self.messages is not None else None
        return (msgs, self.prompt, self.sampling)


@dataclass
class Usage:
    """Token and time accounting. ``cached_tokens`` is None when the engine cannot tell (never a fake 0)."""

    calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int | None = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        cached = (
            None
            if self.cached_tokens is None or other.cached_tokens is None
            else self.cached_tokens + other.cached_tokens
        )
        return Usage(
            calls=self.calls + other.calls,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            cached_tokens=cached,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            seconds=self.seconds + other.seconds,
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 4),
        }


@dataclass
class Result:
    text: str
    finish_reason: FinishReason = "stop"
    usage: Usage = field(default_factory=Usage)
    error: str | None = None

    @classmethod
    def failed(cls, message: str) -> Result:
        return cls(text="", finish_reason="error", usage=Usage(calls=1), error=message)

    @property
    def ok(self) -> bool:
        return self.error is None


class Engine(abc.ABC):
    """Base class for engines. Subclasses implement ``generate`` and ``render``; ``count_tokens`` should be
    exact where the engine has a tokenizer."""

    #: short backend name ("transformers", "vllm", "openai", "scripted")
    backend: str = "base"
    #: the model this engine serves, as users named it
    model_name: str = ""
    #: "chat" when the model is instruction-tuned and takes messages, "completion" for base models
    prompt_format: Literal["chat", "completion"] = "chat"
    #: the model's context window in tokens (0 = unknown)
    context_length: int = 0
    #: True when ``generate(requests, deadline=...)`` stops the work it started once ``time.monotonic()``
    #: passes ``deadline`` (a cut-off request fails with its usage so far); the scheduler passes it then
    supports_deadline: bool = False
    #: True when ``SamplingParams.grammar`` constrains the reply (llama.cpp grammars, vLLM structured outputs)
    supports_grammar: bool = False
    #: True when ``generate(requests, cancel=events)`` takes one ``threading.Event`` per request and stops the
    #: work of a request soon after its event is set (a cut-off request fails with its usage so far); the
    #: scheduler sets the event when every caller waiting on the request has gone
    supports_cancel: bool = False
    #: how many ``generate`` calls the engine serves at once (from different threads); above 1 the scheduler
    #: hands over each gathered batch at once instead of waiting for the previous call (continuous batching
    #: inside the engine, e.g. vLLM's AsyncLLM)
    concurrent_calls: int = 1

    @abc.abstractmethod
    def generate(self, requests: list[Request]) -> list[Result]:
        """Run all requests (as one batch where the engine can) and return results in the same order.
        Must not raise for a failure of a single request: return ``Result.failed`` for it. Must be safe to
        call from several threads (a lock is enough: the scheduler is the usual single caller)."""

    def render(self, request: Request) -> str:
        """The exact text the model will see for this request (chat template applied). The scheduler
        groups requests by the common prefix of this text."""
        if request.prompt is not None:
            return request.prompt
        return plain_turns(list(request.messages or ()))

    def rendered(self, request: Request) -> str:
        """``render(request)``, remembered for the most recent requests (by identity): the scheduler renders a
        request to group prefixes and the engine to run it, and a long root prompt is rendered only once."""
        memo: tuple[threading.Lock, OrderedDict[int, tuple[Request, str]]] | None = self.__dict__.get("_render_memo")
        if memo is None:
            memo = self.__dict__.setdefault("_render_memo", (threading.Lock(), OrderedDict()))
        lock, recent = memo
        with lock:
            hit = recent.get(id(request))
            if hit is not None and hit[0] is request:
                return hit[1]
        text = self.render(request)
        with lock:
            recent[id(request)] = (request, text)  # holding the request keeps its id from being reused
            while len(recent) > RENDER_MEMO_SIZE:
                recent.popitem(last=False)
        return text

    def count_tokens(self, text: str) -> int:
        """Token count of ``text``; engines without a tokenizer estimate (~4 characters a token)."""
        return max(1, len(text) // 4) if text else 0

    def close(self) -> None:  # noqa: B027  (optional: engines with nothing to release keep this one)
        """Release resources (threads, HTTP pools, GPU memory). Safe to call twice."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def generate_isolated(run_batch: Callable[[list[T]], list[Result]], items: Sequence[T], label: str) -> list[Result]:
    """Run ``items`` as one batch; if the batch as a whole fails, run them one by one so that only the
    request that caused the failure gets an error result (its siblings keep their answers)."""
    try:
        return run_batch(list(items))
    except Exception as exc:
        if len(items) == 1:
            return [Result.failed(f"{label}: {type(exc).__name__}: {exc}")]
    out: list[Result] = []
    for item in items:
        try:
            out.extend(run_batch([item]))
        except Exception as exc:
            out.append(Result.failed(f"{label}: {type(exc).__name__}: {exc}"))
    return out
