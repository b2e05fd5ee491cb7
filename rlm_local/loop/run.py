"""One completion, top to bottom: the loop that turns a root model's replies into REPL cells until a final
answer or a budget ends it.

A ``Run`` is one (sub-)run of the loop: its conversation with the root model and its sandbox session.
``RLM.completion`` makes the depth-0 run; ``rlm_query`` makes a child one level deeper that shares the
parent's ``Budget``, usage and trajectory (one completion = one budget, whatever the depth).

Budgets hold to the second: every wait on an engine and every cell is bounded by the time left, a call
cut off by the time budget is reported as ``max_timeout`` (never as an engine failure) and its engine work
is still counted. After any budget stop the root is asked once for its best answer; that closing request
(and the cell or variable read that resolves it) gets ``FINAL_GRACE_SECONDS`` past the deadline, once per
completion, children included.

Small instruction models are steered back on track (steering.py): a runaway reply is cut, a repeated
turn gets an escalating nudge, and a prose reply that is plainly an answer is taken (final.plain_answer).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from ..engines import Engine, Request, Result, Usage
from ..errors import BudgetExceeded, SetupError
from ..errors import logger as _root_logger
from ..runlog.events import CellRan, ChildStart, ContextDescribed, Event, RootTurn, SubCall
from ..runlog.trajectory import Trajectory
from ..runlog.usage import UsageTracker
from ..sandbox import CellResult, Limits, Sandbox, SandboxError, SandboxPool
from ..scheduling.scheduler import Scheduler
from . import final, prompts
from .batching import rewrite_sibling_calls
from .conversation import Conversation
from .formats import PromptFormat
from .prompts import Context, ContextError, check_context, flatten_context
from .steering import Steering

logger = _root_logger.getChild("run")

STOP_REASONS = (
    "final",
    "max_iterations",
    "max_timeout",
    "max_tokens",
    "max_subcalls",
    "max_errors",
    "engine_error",
    "cancelled",
)
FINAL_GRACE_SECONDS = 1.0  # the closing final-answer request may run this long past max_timeout
# A greedy root request that failed after this long is not sent again: it would compute the same reply for
# as long again (a timed-out 2,048-token reply on a CPU server was retried and timed out twice).
NO_RETRY_AFTER_SECONDS = 30.0


@dataclass
class Budget:
    """Limits and counters of one completion(), shared by its child runs. Thread-safe where it counts."""

    max_iterations: int
    max_timeout: float | None = None
    max_tokens: int | None = None
    max_subcalls: int | None = None
    max_errors: int | None = None  # consecutive failing cells of one (sub-)run
    final_grace: float = FINAL_GRACE_SECONDS
    started: float = field(default_factory=time.monotonic)
    subcalls: int = 0
    exhausted: str | None = None  # a budget that refused a sub-call ends the run at the next check
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def time_left(self) -> float | None:
        return None if self.max_timeout is None else self.started + self.max_timeout - time.monotonic()

    def wait_limit(self) -> float | None:
        """How long an engine call or a cell may take now: the time left (never negative), or no limit."""
        left = self.time_left()
        return None if left is None else max(0.0, left)

    def closing_limit(self) -> float | None:
        """The same for the closing request after a budget stop: up to the deadline plus the grace."""
        left = self.time_left()
        return None if left is None else max(0.0, left + self.final_grace)

    def stop_reason(self, tokens_used: int) -> str | None:
        if self.exhausted:
            return self.exhausted
        left = self.time_left()
        if left is not None and left <= 0:
            return "max_timeout"
        if self.max_tokens is not None and tokens_used >= self.max_tokens:
            return "max_tokens"
        if self.max_subcalls is not None and self.subcalls >= self.max_subcalls:
            return "max_subcalls"
        return None

    def cancel(self) -> None:
        """Stop the run at its next check (the caller went away): no closing request, sub-calls refused."""
        self.exhausted = "cancelled"

    def reserve_subcalls(self, count: int, tokens_used: int) -> None:
        """Count ``count`` sub-calls against the budget, or raise BudgetExceeded (shown to the code)."""
        with self.lock:
            if self.max_subcalls is not None and self.subcalls + count > self.max_subcalls:
                left = self.max_subcalls - self.subcalls
                if left <= 0:
                    self.exhausted = "max_subcalls"
                    raise BudgetExceeded(
                        f"max_subcalls budget ({self.max_subcalls}) used up; call FINAL with what you have"
                    )
                raise BudgetExceeded(
                    f"max_subcalls budget: {count} sub-calls requested but only {left} of "
                    f"{self.max_subcalls} left; ask fewer"
                )
            self.subcalls += count
        reason = self.stop_reason(tokens_used)
        if reason is not None and reason != "max_subcalls":
            raise BudgetExceeded(f"{reason} budget used up; call FINAL with what you have")


@dataclass(frozen=True)
class Model:
    """An engine as the loop uses it, resolved once per RLM from its model card."""

    engine: Engine
    scheduler: Scheduler
    name: str
    format: PromptFormat  # chat or completion, from the card
    root_sampling: dict[str, Any]  # for root turns: the card's sampling
    sub_sampling: dict[str, Any]  # for sub-calls: greedy, an answer's length
    prompt_tokens: int  # the most prompt tokens a root conversation may use
    context_length: int


@dataclass(frozen=True)
class Settings:
    """What every run of one RLM shares: the models and the loop's options."""

    root: Model
    sub: Model
    max_depth: int
    output_limit: int
    sandbox_limits: Limits
    custom_system_prompt: str | None
    implicit_batching: bool
    tools: dict[str, Any] = field(default_factory=dict)  # custom_tools: REPL names backed by the caller
    sandbox_pool: SandboxPool | None = None  # pre-started sandbox workers for this RLM's runs (none: off)


@dataclass
class Outcome:
    answer: str
    stopped_reason: str
    iterations: int


class Run:
    """One (sub-)run: a conversation with the root model and a sandbox session, inside a shared budget."""

    def __init__(
        self,
        settings: Settings,
        budget: Budget,
        usage: UsageTracker,
        trajectory: Trajectory,
        run_id: str,
        depth: int = 0,
    ) -> None:
        self.settings, self.budget, self.usage, self.trajectory = settings, budget, usage, trajectory
        self.run_id, self.depth = run_id, depth
        self.convo: Conversation | None = None
        self.sandbox: Sandbox | None = None
        # A session's REPL outlives its runs: ``sandbox_provider(run, context)`` gives the context manager
        # to run in (a kept-alive sandbox is not closed by it). Children always open their own.
        self.sandbox_provider: Callable[[Run, Context], AbstractContextManager[Sandbox]] | None = None
        self._closing = False  # the closing request is under way: waits may use the grace

    def child(self) -> Run:
        return Run(self.settings, self.budget, self.usage, self.trajectory, self.run_id, self.depth + 1)

    # ---- the loop -----------------------------------------------------------------------------------------
    def solve(self, context: Context, question: str | None) -> Outcome:
        s = self.settings
        info = prompts.describe_context(context, s.root.engine.count_tokens)
        self.log(ContextDescribed(depth=self.depth, metadata=info.to_dict()))
        self.convo = Conversation.start(
            s.root.format,
            s.root.engine.count_tokens,
            question,
            info,
            s.output_limit,
            s.custom_system_prompt,
            s.root.prompt_tokens,
            s.sub.context_length or 32_768,
        )
        opener = self.sandbox_provider(self, context) if self.sandbox_provider else self.open_sandbox(context)
        with opener as self.sandbox:
            failures = 0  # consecutive turns whose cells all failed (max_errors)
            steer = Steering()  # repeats, prose answers, runaway replies (steering.py)
            for iteration in range(1, self.budget.max_iterations + 1):
                if reason := self.stop_reason():
                    return self._close(reason, iteration - 1)
                result = self._root_turn(iteration)
                if result is None:
                    return self._close(self.stop_reason() or "engine_error", iteration)
                reply = self._trim(result, steer)
                answer, feedback, failed = self._act(reply, iteration, steer)
                if answer is not None:
                    return Outcome(answer, "final", iteration)
                self.convo.add_turn(reply, steer.feedback(reply, feedback))
                failures = failures + 1 if failed else 0
                if self.budget.max_errors is not None and failures >= self.budget.max_errors:
                    return self._close("max_errors", iteration)
            return self._close("max_iterations", self.budget.max_iterations)

    def _root_turn(self, iteration: int) -> Result | None:
        """The root's next reply, or None when the engine failed (twice, or once slowly on a greedy
        request: see NO_RETRY_AFTER_SECONDS) or the budget ran out meanwhile."""
        assert self.convo is not None  # run() starts the conversation before the first turn
        request = self.convo.request(self.settings.root.root_sampling)
        for attempt in range(2):  # one retry: a transient engine failure should not end the run
            started = time.monotonic()
            result = self._call_root(request, iteration, attempt=attempt)
            if result.ok:
                return result
            if self.stop_reason():  # cut off by the budget: not an engine failure, and no retry
                return None
            logger.warning(
                "run %s depth %d turn %d: root call failed (attempt %d): %s",
                self.run_id,
                self.depth,
                iteration,
                attempt + 1,
                result.error,
            )
            if request.sampling.greedy and time.monotonic() - started >= NO_RETRY_AFTER_SECONDS:
                return None  # the same greedy request would spend the same time again
        return None

    def _trim(self, result: Result, steer: Steering) -> str:
        """The reply as the loop keeps it: a runaway repetition cut (steering.py); notes for the model."""
        reply = steer.trim(result.text, result.finish_reason, self.settings.root.root_sampling.get("max_tokens"))
        if len(reply) < len(result.text):
            logger.info(
                "run %s depth %d: cut a runaway reply (%d -> %d characters)",
                self.run_id,
                self.depth,
                len(result.text),
                len(reply),
            )
        return reply

    def _act(self, reply: str, iteration: int, steer: Steering) -> tuple[str | None, str, bool]:
        """Run the reply's code; returns (final answer or None, feedback for the root, every cell failed)."""
        assert self.convo is not None  # run() starts the conversation before the first turn
        parsed = self.convo.parse(reply)
        if not parsed.code_blocks:
            if not parsed.has_final:
                # Prose only: taken when plainly an answer (steering.py), else ask for FINAL explicitly.
                answer = steer.prose_answer(reply)
                if answer is not None:
                    return answer, "", False
                return None, self.convo.feedback([], [prompts.PROSE_NUDGE]), False
            steer.acted(0)
            answer = final.from_text(parsed, self._read)
            if answer is not None:
                return answer, "", False
            return None, self.convo.feedback([_missing(parsed.final_var)]), True
        cells: list[CellResult] = []
        outputs: list[str] = []
        for code in parsed.code_blocks:
            if self.stop_reason():
                break
            cell = self._run_cell(code, iteration)
            cells.append(cell)
            if cell.final is not None:
                break
            outputs.append(_cell_text(cell))
        steer.acted(len(cells))
        answer = final.after_cells(parsed, cells, self._read)
        if answer is not None:
            return answer, "", False
        if parsed.final_var is not None:
            outputs.append(_missing(parsed.final_var))
        notes = [prompts.IGNORED_FINAL] if parsed.final_answer is not None else []
        failed = bool(cells) and all(c.error is not None for c in cells)
        return None, self.convo.feedback(outputs, notes), failed

    def _close(self, reason: str, iterations: int) -> Outcome:
        """A budget ended the run: ask the root once for its best answer from what it has seen."""
        if reason == "cancelled":  # nobody is waiting for a best answer
            return Outcome("", reason, iterations)
        self._closing = True
        assert self.convo is not None  # run() starts the conversation before the first turn
        logger.info(
            "run %s depth %d: %s after %d turns; asking for a final answer", self.run_id, self.depth, reason, iterations
        )
        self.convo.add_budget_stop(reason)
        result = self._call_root(
            self.convo.request(self.settings.root.root_sampling), iterations + 1, final_request=True
        )
        if not result.ok:
            return Outcome("", reason, iterations)
        parsed = self.convo.parse(result.text)
        answer = final.from_text(parsed, self._read, closing=True)
        if answer is None:  # the model answered in code anyway: run only the code that gives the answer
            cells = [
                self._run_cell(code, iterations + 1)
                for code in parsed.code_blocks
                if "FINAL" in code or final.ANSWER_VAR in code
            ]
            answer = final.after_cells(parsed, cells, self._read) if cells else None
        # No final answer in the reply: its prose is the best partial answer, never its code.
        return Outcome(answer if answer is not None else final.prose(result.text), reason, iterations)

    def answer_directly(self, context: Context, question: str | None) -> str:
        """The reference's rule for an RLM created at ``depth >= max_depth``: it is a plain model call."""
        text = flatten_context(context) if question is None else f"{question}\n\n{flatten_context(context)}"
        root = self.settings.root
        (result,) = self._submit(root, [root.format.subcall(text, root.sub_sampling)], "root", self.depth)
        self.log(
            SubCall(
                depth=self.depth,
                query="llm",
                prompt=text,
                response=result.text,
                error=result.error,
                usage=result.usage,
                seconds=result.usage.seconds,
            )
        )
        return result.text.strip()

    # ---- steps ----------------------------------------------------------------------------------------------
    def _call_root(self, request: Request, iteration: int, **fields: Any) -> Result:
        """One root-model call through the scheduler, bounded by the budget, counted and logged."""
        started = time.monotonic()
        (result,) = self._submit(self.settings.root, [request], "root", self.depth)
        self.log(
            RootTurn(
                depth=self.depth,
                iteration=iteration,
                prompt_tokens=result.usage.prompt_tokens,
                cached_tokens=result.usage.cached_tokens,
                completion_tokens=result.usage.completion_tokens,
                reply=result.text,
                error=result.error,
                seconds=round(time.monotonic() - started, 3),
                **fields,
            )
        )
        return result

    def _run_cell(self, code: str, iteration: int) -> CellResult:
        rewrites = 0
        code_to_run = code
        if self.settings.implicit_batching:
            code_to_run, rewrites = rewrite_sibling_calls(
                code, max_prompts=self.settings.sandbox_limits.max_prompts_per_call
            )
        assert self.sandbox is not None  # run() opens the sandbox before the first turn
        cell = self.sandbox.run(code_to_run, wall_seconds=self._wait_limit(), deadline=self._cell_deadline())
        self.log(
            CellRan(
                depth=self.depth,
                iteration=iteration,
                code=code,
                batched_rewrites=rewrites,
                stdout=cell.stdout,
                error=cell.error,
                final=cell.final,
                timed_out=cell.timed_out,
                restored=cell.restored,
                seconds=round(cell.seconds, 3),
            )
        )
        return cell

    def _read(self, name: str) -> CellResult:
        """A REPL variable, read directly (final.py resolves FINAL_VAR and the answer dict with it)."""
        assert self.sandbox is not None  # run() opens the sandbox before the first turn
        return self.sandbox.read_variable(name, wall_seconds=self._wait_limit(), deadline=self._cell_deadline())

    def _cell_deadline(self) -> float | None:
        """When a cell must end, time waiting on its sub-calls included: the time budget plus half the
        grace (the whole grace for the closing request's cells, the closing request gets the rest). A
        cell's wall limit alone does not count sub-call waits, so a cell that waited on a sub-call until
        the deadline and then kept computing would run that long again (2.8 s past a 3 s budget,
        measured); the sandbox stops it here instead and rolls the session back, variables kept."""
        left = self.budget.time_left()
        if left is None:
            return None
        return time.monotonic() + max(0.0, left) + self.budget.final_grace * (1.0 if self._closing else 0.5)

    def open_sandbox(
        self,
        context: Context,
        llm_handler: Callable[[list[str]], list[str]] | None = None,
        rlm_handler: Callable[..., str] | None = None,
    ) -> Sandbox:
        """A new REPL session on ``context`` with this run's limits and tools; sub-calls go to this run
        unless other handlers are given (a persistent REPL routes them to whichever run uses it)."""
        try:
            return Sandbox(
                context=context,
                limits=self.settings.sandbox_limits,
                llm_handler=llm_handler or self.llm_query,
                rlm_handler=rlm_handler or self.rlm_query,
                tools=self.settings.tools,
                pool=self.settings.sandbox_pool,
            )
        except SandboxError as exc:
            raise SetupError(f"could not start the sandbox: {exc}") from exc

    # ---- budgets and accounting -----------------------------------------------------------------------------
    def stop_reason(self) -> str | None:
        return self.budget.stop_reason(self.usage.total_tokens)

    def _wait_limit(self) -> float | None:
        return self.budget.closing_limit() if self._closing else self.budget.wait_limit()

    def _submit(self, model: Model, requests: list[Request], role: str, depth: int) -> list[Result]:
        """Requests through the model's scheduler, bounded by the time left, with their usage counted;
        work the engine finishes after we stopped waiting is counted when it ends."""

        def count(usage: Usage) -> None:
            self.usage.add(usage, model.name, depth, role)

        # Every request carries the run id, so a router in front of several servers keeps the run on one.
        requests = [r.with_session(self.run_id) for r in requests]
        results = model.scheduler.submit(requests, self.run_id, timeout=self._wait_limit(), on_late_usage=count)
        for result in results:
            if result.ok and result.usage.calls == 0:  # the scheduler answered from its memo: no engine work
                self.usage.add_memo_hit()
            count(result.usage)
        return results

    def log(self, event: Event) -> None:
        self.trajectory.log(event)

    # ---- sub-call handlers (called by the sandbox, in the thread running the cell) ----------------------------
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
        """``rlm_query``: a child run one level deeper, or a plain sub-call at the depth limit."""
        depth = self.depth + 1
        if depth >= self.settings.max_depth:
            text = prompt if context is None else f"{prompt}\n\n{flatten_context(context)}"
            return self.llm_query([text])[0]
        self.budget.reserve_subcalls(1, self.usage.total_tokens)
        question = prompt if context is not None else None
        started = time.monotonic()
        self.log(ChildStart(depth=depth, question=question))
        try:
            outcome = self.child().solve(check_context(context if context is not None else prompt), question)
        except ContextError as exc:
            return f"[rlm_query error: {exc}]"
        self.log(
            SubCall(
                depth=depth,
                query="rlm",
                prompt=prompt,
                response=outcome.answer,
                stopped_reason=outcome.stopped_reason,
                iterations=outcome.iterations,
                seconds=round(time.monotonic() - started, 3),
            )
        )
        if outcome.stopped_reason != "final":  # tell the parent's code that this is a partial answer, and why
            return f"[rlm_query stopped at {outcome.stopped_reason}] {outcome.answer}".rstrip()
        return outcome.answer


def _cell_text(cell: CellResult) -> str:
    parts = [cell.stdout.rstrip("\n")] if cell.stdout.strip() else []
    if cell.error:
        parts.append(cell.error.rstrip("\n"))
    if cell.restored:
        parts.append("[the cell was stopped at a limit; variables are as they were before it ran]")
    return "\n".join(parts) or "(no output)"


def _missing(name: str | None) -> str:
    return f"NameError: FINAL_VAR: no variable named {name!r}; define it first"
