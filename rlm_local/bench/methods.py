"""The four methods the kit compares, all on the same engine and items (the paper's Table 1 set-up).

- ``base``: one call with the context truncated (from the end) to the model's window, then the question.
- ``rlm``: the full RLM loop (REPL, sub-calls).
- ``rlm-nosub``: the same loop with sub-calls refused (the paper's ablation): ``llm_query`` and friends
  return an error string to the code, so the root must work with code alone.
- ``summary``: an iterative summarise-then-answer agent: the context in window-sized chunks, running
  notes updated chunk by chunk, then one answer from the notes (the paper's strongest baseline).

Guarantees: every method returns an :class:`Answer` (never raises for a model or engine failure; those
land in ``stop`` and ``error``); all calls go through the engine's one shared scheduler, so concurrent
items batch together; the RLMs are created once per sweep and closed by :meth:`Methods.close`.
"""

from __future__ import annotations

import resource
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .. import defaults
from ..engines import Engine, Request, Result, Usage
from ..loop.run import FINAL_GRACE_SECONDS, Model
from ..rlm import RLM
from .items import METHODS, BenchError, Item

NOTES_CHARS = 2_000  # running notes of the summary agent are cut here so they never crowd out the chunk
FRAME_TOKENS = 64  # room for the prompt frame ("Question: ... Answer:") around context and question


@dataclass
class Answer:
    """One method's outcome on one item: the answer and what it cost."""

    answer: str
    stop: str  # "final", a budget name, "answer" (base / summary), "engine_error", "error"
    seconds: float
    root_calls: int = 0
    sub_calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int | None = 0
    completion_tokens: int = 0
    iterations: int = 0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The run's events (RLM methods): saved beside the rows for `bench report --failures`, never in a row.
    trajectory: list[dict[str, Any]] = field(default_factory=list, repr=False)


class NoSubEngine(Engine):
    """The sub-model of ``rlm-nosub``: refuses every request without touching the real engine."""

    backend = "nosub"
    supports_deadline = True

    def __init__(self, like: Engine) -> None:
        self.model_name = ""
        self.prompt_format = like.prompt_format
        self.context_length = like.context_length

    def generate(self, requests: list[Request], deadline: float | None = None) -> list[Result]:
        return [
            Result(
                text="",
                finish_reason="error",
                usage=Usage(),
                error="sub-calls are disabled in this run (rlm-nosub); use code only",
            )
            for _ in requests
        ]


def check_methods(names: list[str]) -> list[str]:
    for name in names:
        if name not in METHODS:
            raise BenchError(f"unknown method {name!r}; choose from: {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports KiB). Process-wide: with concurrent items it
    is the peak of all of them, not of one item."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class Methods:
    """The methods of one sweep on one engine. ``window`` caps the prompt of ``base`` and ``summary`` (default:
    the root model's prompt budget from its card); thread-safe: items may run concurrently."""

    def __init__(
        self,
        engine: Engine,
        names: list[str],
        *,
        max_iterations: int = defaults.BENCH_MAX_ITERATIONS,
        max_timeout: float | None = None,
        window: int | None = None,
        scheduler_kwargs: dict[str, Any] | None = None,
        levers: dict[str, bool] | None = None,
    ) -> None:
        self.names = check_methods(names)
        self.engine, self.max_timeout = engine, max_timeout
        self._rlms: dict[str, RLM] = {}
        self._nosub = NoSubEngine(engine)
        # The scheduler's memo is off by default: a method must never be answered from another method's (or a
        # previous item's) identical call, or its cost would read as zero.
        common: dict[str, Any] = dict(
            engine=engine,
            max_iterations=max_iterations,
            max_timeout=max_timeout,
            scheduler_kwargs={"memo": False} if scheduler_kwargs is None else scheduler_kwargs,
            levers=levers or None,
            raise_on_limit=False,  # a budget stop is scored like any answer, with its stopped_reason recorded
        )
        try:
            # The full RLM also serves base and summary: they use its root model (card, format, scheduler).
            self._rlms["rlm"] = RLM(backend=engine.backend, **common)
            if "rlm-nosub" in self.names:
                self._rlms["rlm-nosub"] = RLM(backend=engine.backend, sub_engine=self._nosub, **common)
        except BaseException:
            self.close()
            raise
        self.model: Model = self._rlms["rlm"].settings.root
        self.window = window or self.model.prompt_tokens

    def close(self) -> None:
        for rlm in self._rlms.values():
            rlm.close()
        self._rlms.clear()

    def run(self, name: str, item: Item) -> Answer:
        started = time.monotonic()
        try:
            if name in ("rlm", "rlm-nosub"):
                return self._rlm(self._rlms[name], item)
            return self._base(item) if name == "base" else self._summary(item)
        except Exception as exc:  # one item's failure must not end the sweep: it becomes that row's error
            return Answer(
                answer="", stop="error", seconds=time.monotonic() - started, error=f"{type(exc).__name__}: {exc}"
            )

    # ---- the methods ------------------------------------------------------------------------------------
    def _rlm(self, rlm: RLM, item: Item) -> Answer:
        result = rlm.completion(item.context, root_prompt=item.question)
        s = result.usage_summary
        root, sub = s.by_role.get("root", Usage()), s.by_role.get("sub", Usage())
        return Answer(
            answer=result.response,
            stop=result.stopped_reason,
            seconds=result.execution_time,
            root_calls=root.calls,
            sub_calls=sub.calls,
            prompt_tokens=s.total.prompt_tokens,
            cached_tokens=s.total.cached_tokens,
            completion_tokens=s.total.completion_tokens,
            iterations=result.iterations,
            trajectory=result.trajectory,
            extra={
                "levers": rlm.settings.levers.to_dict(),
                "answer_source": result.answer_source,
                "answer_grounded": result.answer_grounded,
            },
        )

    def _base(self, item: Item) -> Answer:
        started = time.monotonic()
        budget = self.window - self.engine.count_tokens(item.question) - self._answer_tokens() - FRAME_TOKENS
        context = self._fit(item.context, budget)
        result, usage = self._ask([f"{context}\n\n{item.question}"], started)
        return Answer(
            answer=result.text.strip(),
            stop=self._stop("answer", result, started),
            seconds=time.monotonic() - started,
            root_calls=usage.calls,
            prompt_tokens=usage.prompt_tokens,
            cached_tokens=usage.cached_tokens,
            completion_tokens=usage.completion_tokens,
            error=result.error,
            extra={"context_chars_seen": len(context)},
        )

    def _summary(self, item: Item) -> Answer:
        started = time.monotonic()
        notes_tokens = NOTES_CHARS // 3  # a generous estimate: notes are prose, ~4 characters a token
        budget = (
            self.window
            - self.engine.count_tokens(item.question)
            - self._answer_tokens()
            - notes_tokens
            - 2 * FRAME_TOKENS
        )
        if budget < 64:
            raise BenchError(f"the window ({self.window} tokens) is too small for the summary agent")
        chunks = self._chunks(item.context, budget)
        notes, total, stop = "(none yet)", Usage(), "answer"
        for chunk in chunks:
            if self.max_timeout is not None and time.monotonic() - started > self.max_timeout:
                stop = "max_timeout"
                break
            prompt = (
                f"Notes so far: {notes}\n\nText:\n{chunk}\n\nRewrite the notes, keeping everything in the "
                f"notes and the text that helps answer this question: {item.question}"
            )
            result, usage = self._ask([prompt], started)
            total = total + usage
            if result.ok and result.text.strip():
                notes = result.text.strip()[:NOTES_CHARS]
        # The answer from the notes gets the closing grace an RLM's final request gets: notes without an
        # answer would be the budget's doing, not the method's.
        result, usage = self._ask([f"Notes: {notes}\n\n{item.question}"], started, closing=True)
        total = total + usage
        return Answer(
            answer=result.text.strip(),
            stop=self._stop(stop, result, started),
            seconds=time.monotonic() - started,
            root_calls=total.calls,
            prompt_tokens=total.prompt_tokens,
            cached_tokens=total.cached_tokens,
            completion_tokens=total.completion_tokens,
            error=result.error,
            iterations=len(chunks),
            extra={"chunks": len(chunks)},
        )

    # ---- helpers ----------------------------------------------------------------------------------------
    def _answer_tokens(self) -> int:
        return int(self.model.sub_sampling.get("max_tokens", 256))

    def _stop(self, stop: str, result: Result, started: float) -> str:
        """The row's stop reason: a failed call after the time budget ran out is the budget's, not the engine's."""
        if result.ok:
            return stop
        if self.max_timeout is not None and time.monotonic() - started >= self.max_timeout:
            return "max_timeout"
        return "engine_error"

    def _ask(self, texts: list[str], started: float, closing: bool = False) -> tuple[Result, Usage]:
        """One model call through the shared scheduler, bounded by what is left of ``max_timeout`` (plus the
        closing grace for the last call of a method)."""
        grace = FINAL_GRACE_SECONDS if closing else 0.0
        left = None if self.max_timeout is None else max(1.0, self.max_timeout + grace - (time.monotonic() - started))
        m = self.model
        results = m.scheduler.submit(
            [m.format.subcall(t, m.sub_sampling) for t in texts], f"bench-{uuid.uuid4().hex[:8]}", timeout=left
        )
        usage = Usage()
        for r in results:
            usage = usage + r.usage
        return results[0], usage

    def _fit(self, text: str, budget: int) -> str:
        """The longest prefix of ``text`` within ``budget`` tokens (a few tokenizer passes, shrinking)."""
        if budget <= 0:
            return ""
        cut = min(len(text), budget * 6)
        for _ in range(8):
            n = self.engine.count_tokens(text[:cut])
            if n <= budget:
                return text[:cut]
            cut = int(cut * budget / n * 0.97)
        return text[:cut]

    def _chunks(self, text: str, budget: int) -> list[str]:
        chunks, start = [], 0
        while start < len(text):
            piece = self._fit(text[start : start + budget * 6], budget)
            if not piece:
                break
            chunks.append(piece)
            start += len(piece)
        return chunks
