"""The sub-call handlers of a run, called by the sandbox in the thread running the cell: ``llm_query`` and
``llm_query_batched`` (one scheduler submission, so siblings batch), ``rlm_query`` (a child run one level
deeper, or a plain sub-call at the depth limit) and ``rlm_query_batched`` (up to ``max_concurrent_subcalls``
children at once; their own sub-calls still batch in the scheduler).

Before a child starts, the tree's budgets are checked (``_preflight``): a child whose expected cost the
time or tokens left cannot cover is refused, and the code is told why. Expected: what finished children at
its depth cost (their mean), and at least a sandbox start and one root turn (the tree's means so far). A model name where ``rlm_query`` takes a context is the reference's
``rlm_query(prompt, model)``: honoured for the RLM's own models, refused for others, never read as a
document. ``llm_query(..., model=...)`` is refused by the REPL itself (sandbox/worker/repl.py).
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..engines import Request, Result
from ..errors import BudgetExceeded
from ..runlog.events import ChildStart, Event, SubCall
from ..runlog.usage import UsageTracker
from .budget import Budget
from .conversation import Conversation
from .hooks import PREVIEW_CHARS
from .prompts import Context, ContextError, check_context, flatten_context
from .settings import Model, Settings

if TYPE_CHECKING:
    from .run import Run

# A string passed where rlm_query takes a context that looks like a model name ("gpt-4", "org/model:tag"):
# the reference's rlm_query(prompt, model), never a document (a document has spaces or is longer).
_MODEL_NAME = re.compile(r"[A-Za-z][\w.@]*(?:[-/:][\w.@]+)+")


class SubCalls:
    """Run's sub-call handlers (a mixin: Run provides the state below)."""

    settings: Settings
    budget: Budget
    usage: UsageTracker
    depth: int
    run_id: str
    convo: Conversation | None

    if TYPE_CHECKING:

        def child(self) -> Run: ...
        def stop_reason(self) -> str | None: ...
        def log(self, event: Event) -> None: ...
        def _submit(self, model: Model, requests: list[Request], role: str, depth: int) -> list[Result]: ...

    def llm_query(self, prompts_in: list[str]) -> list[str]:
        """``llm_query`` / ``llm_query_batched``: one scheduler submission, so siblings batch together."""
        sub, depth = self.settings.sub, self.depth + 1
        self.budget.reserve_subcalls(len(prompts_in), self.usage.total_tokens)
        requests = [sub.format.subcall(p, sub.sub_sampling) for p in prompts_in]
        started = time.monotonic()
        results = self._submit(sub, requests, "sub", depth)
        elapsed = round(time.monotonic() - started, 3)
        answers: list[str] = []
        for prompt, result in zip(prompts_in, results):
            self.log(
                SubCall(
                    depth=depth,
                    query="llm",
                    prompt=prompt,
                    response=result.text,
                    error=result.error,
                    usage=result.usage,
                    seconds=elapsed,
                    batch=len(prompts_in),
                )
            )
            answers.append(result.text.strip() if result.ok else f"[llm_query error: {result.error}]")
        if self.stop_reason() == "max_timeout" and not all(r.ok for r in results):
            raise BudgetExceeded("max_timeout budget used up; call FINAL with what you have")
        return answers

    def rlm_query(self, prompt: str, context: Context | None = None) -> str:
        """``rlm_query``: a child run one level deeper, or a plain sub-call at the depth limit. A model name
        where the context goes is the reference's ``rlm_query(prompt, model)``: honoured when it names the
        root or sub model (the child's root), refused otherwise; never taken for a document."""
        model, context, refused = self._model_argument(context)
        if refused:
            return refused
        depth = self.depth + 1
        if depth >= self.settings.max_depth:
            text = prompt if context is None else f"{prompt}\n\n{flatten_context(context)}"
            return self.llm_query([text])[0]
        if refused := self._preflight():
            self.log(SubCall(depth=depth, query="rlm", prompt=prompt, response=refused, seconds=0.0, error=refused))
            return refused
        try:
            child_context = check_context(context if context is not None else prompt)
        except ContextError as exc:
            return f"[rlm_query error: {exc}]"
        self.budget.reserve_subcalls(1, self.usage.total_tokens)
        question = prompt if context is not None else None
        started = time.monotonic()
        self.log(ChildStart(depth=depth, question=question))
        hooks = self.settings.hooks
        hooks.call("on_subcall_start", depth, model.name, prompt[:PREVIEW_CHARS])
        child = self.child()
        if model is not self.settings.root:
            child.settings = replace(self.settings, root=model)
        tokens_before = self.usage.total_tokens
        try:
            outcome = child.solve(child_context, question)
        except BaseException as exc:
            hooks.call(
                "on_subcall_complete", depth, model.name, time.monotonic() - started, f"{type(exc).__name__}: {exc}"
            )
            raise
        seconds = time.monotonic() - started
        stopped = None if outcome.stopped_reason == "final" else f"stopped at {outcome.stopped_reason}"
        if stopped is None:  # what a finished child at this depth cost: the next one's estimate (_preflight)
            self.budget.record_child(depth, self.usage.total_tokens - tokens_before, seconds)
        hooks.call("on_subcall_complete", depth, model.name, seconds, stopped)
        self.log(
            SubCall(
                depth=depth,
                query="rlm",
                prompt=prompt,
                response=outcome.answer,
                stopped_reason=outcome.stopped_reason,
                iterations=outcome.iterations,
                seconds=round(seconds, 3),
            )
        )
        if stopped:  # tell the parent's code that this is a partial answer, and why
            return f"[rlm_query {stopped}] {outcome.answer}".rstrip()
        return outcome.answer

    def rlm_query_batched(self, prompts_in: list[str], contexts: list[Any]) -> list[str]:
        """``rlm_query_batched``: up to ``max_concurrent_subcalls`` child runs at once, answers in order."""
        workers = min(len(prompts_in), self.settings.max_concurrent_subcalls)
        if workers <= 1:
            return [self.rlm_query(p, c) for p, c in zip(prompts_in, contexts)]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"rlm-{self.run_id}") as pool:
            return list(pool.map(self.rlm_query, prompts_in, contexts))

    def _model_argument(self, context: Any) -> tuple[Model, Any, str | None]:
        """(the child's root model, the real context, a refusal): see rlm_query."""
        s = self.settings
        if not isinstance(context, str) or len(context) > 200:
            return s.root, context, None
        name = context.strip()
        for model in (s.root, s.sub):
            if name == model.name:
                return model, None, None
        if _MODEL_NAME.fullmatch(name):
            return (
                s.root,
                None,
                f"[rlm_query error: {name!r} looks like a model name, and this RLM has only {s.root.name!r} "
                f"and {s.sub.name!r}; rlm_query(prompt, context) takes a document as its second argument]",
            )
        return s.root, context, None

    def _preflight(self) -> str | None:
        """Why a child run cannot start within the tree's budgets, or None. A child costs what finished
        siblings at its depth cost (their mean), and at least a sandbox start and one root turn (its prompt,
        about this run's opening, and a reply): the tree's means so far."""
        b = self.budget
        known = b.child_cost(self.depth + 1)
        left, need = b.time_left(), b.child_seconds()
        if need is not None and known is not None:
            need = max(need, known[1])
        if left is not None and need is not None and left < need:
            return (
                f"[rlm_query refused: {max(0.0, left):.1f} s left in the run's time budget and a child run needs "
                f"about {need:.1f} s; use llm_query, or finish with FINAL]"
            )
        if b.max_tokens is not None:
            tokens_left = b.max_tokens - self.usage.total_tokens
            reply = b.mean_reply_tokens() or int(self.settings.root.root_sampling.get("max_tokens", 0))
            need_tokens = max(
                (self.convo.opening_tokens if self.convo is not None else 0) + reply, known[0] if known else 0
            )
            if tokens_left < need_tokens:
                return (
                    f"[rlm_query refused: {max(0, tokens_left):,} tokens left in the run's budget and a child run "
                    f"needs about {need_tokens:,}; use llm_query, or finish with FINAL]"
                )
        return None
