"""Typed records of what happens in a run: the trajectory writes them, the display and the CLI read them.

Every event is a dataclass with a ``kind``; ``to_dict()`` is its JSONL form, the trajectory schema:
``{"event": kind, "time": unix seconds, "run_id": ..., <the event's fields>}``. Depth 0 is the root run;
a child started by ``rlm_query`` logs its events at its own depth. Events never carry the context.

| kind          | fields                                                                                 |
|---------------|----------------------------------------------------------------------------------------|
| run_start     | config (the RLM's settings, secrets masked), question, version (TRAJECTORY_VERSION),   |
|               | context_sha256                                                                         |
| context       | depth, metadata (type, chars, tokens, tokens_exact, chunk_chars, names)                |
| root_turn     | depth, iteration, prompt_tokens, cached_tokens, reply, error, seconds, attempt,        |
|               | final_request (the closing request after a budget stop), resample (its attempt > 0:    |
|               | the resample lever), compaction (a summary request), dropped_turns (turns left out of  |
|               | the prompt to fit the window)                                                          |
| cell          | depth, iteration, code (as the model wrote it), batched_rewrites, stdout, error,       |
|               | final, timed_out, restored, seconds                                                    |
| subcall       | depth, query ("llm" or "rlm"), prompt, response, error, usage, seconds, batch,         |
|               | stopped_reason and iterations (rlm only)                                               |
| child_start   | depth, question                                                                        |
| compaction    | depth, iteration, turns, tokens_before, tokens_after, summary                          |
| final         | answer, stopped_reason, iterations, usage (UsageSummary.to_dict()), seconds,           |
|               | answer_source, answer_grounded                                                         |
| error         | error, seconds (completion() raised)                                                   |
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..engines.base import Usage


def clip(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... [clipped: {len(text):,} characters in all]"


@dataclass(kw_only=True)
class Event:
    kind: ClassVar[str] = "event"
    unclipped: ClassVar[tuple[str, ...]] = ()  # fields replay needs whole (model replies)
    time: float = field(default_factory=lambda: round(time.time(), 3))
    run_id: str = ""

    def to_dict(self, max_field_chars: int | None = None) -> dict[str, Any]:
        """The JSONL record; long strings clipped to ``max_field_chars`` with a note of their length, except
        the model's own replies (``unclipped``: bounded by its max_tokens, and replay needs them whole)."""
        record: dict[str, Any] = {"event": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Usage):
                value = value.to_dict()
            elif max_field_chars is not None and isinstance(value, str) and f.name not in self.unclipped:
                value = clip(value, max_field_chars)
            record[f.name] = value
        return record


# The trajectory's format: replay (rlm_local/replay.py) reads files of this version only. 2: full replies and
# sub-call responses (never clipped), the context's sha256, dropped_turns.
TRAJECTORY_VERSION = 2


@dataclass(kw_only=True)
class RunStart(Event):
    kind: ClassVar[str] = "run_start"
    config: dict[str, Any]
    question: str | None
    version: int = TRAJECTORY_VERSION
    context_sha256: str | None = None  # of the context as given (replay checks the one it is handed)


@dataclass(kw_only=True)
class ContextDescribed(Event):
    kind: ClassVar[str] = "context"
    depth: int
    metadata: dict[str, Any]


@dataclass(kw_only=True)
class RootTurn(Event):
    kind: ClassVar[str] = "root_turn"
    unclipped: ClassVar[tuple[str, ...]] = ("reply",)
    depth: int
    iteration: int
    prompt_tokens: int
    cached_tokens: int | None
    reply: str
    error: str | None
    seconds: float
    attempt: int = 0
    final_request: bool = False
    completion_tokens: int | None = None
    resample: int = 0  # > 0: a re-sample of a reply that repeated the last cell (the resample lever)
    compaction: bool = False
    dropped_turns: int = 0


@dataclass(kw_only=True)
class CellRan(Event):
    kind: ClassVar[str] = "cell"
    depth: int
    iteration: int
    code: str
    batched_rewrites: int
    stdout: str
    error: str | None
    final: str | None
    timed_out: bool
    restored: bool
    seconds: float


@dataclass(kw_only=True)
class SubCall(Event):
    kind: ClassVar[str] = "subcall"
    unclipped: ClassVar[tuple[str, ...]] = ("response",)
    depth: int
    query: str  # "llm" or "rlm"
    prompt: str
    response: str
    seconds: float
    error: str | None = None
    usage: Usage | None = None
    batch: int = 1
    stopped_reason: str | None = None
    iterations: int | None = None


@dataclass(kw_only=True)
class ChildStart(Event):
    kind: ClassVar[str] = "child_start"
    depth: int
    question: str | None


@dataclass(kw_only=True)
class Compacted(Event):
    kind: ClassVar[str] = "compaction"
    depth: int
    iteration: int
    turns: int
    tokens_before: int
    tokens_after: int
    summary: str


@dataclass(kw_only=True)
class RunFinal(Event):
    kind: ClassVar[str] = "final"
    answer: str
    stopped_reason: str
    iterations: int
    usage: dict[str, Any]
    seconds: float
    answer_source: str = "final"  # final, closing, recovered or none (RLMResult.answer_source)
    answer_grounded: bool | None = None


@dataclass(kw_only=True)
class RunError(Event):
    kind: ClassVar[str] = "error"
    error: str
    seconds: float
