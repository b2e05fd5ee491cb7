"""The RLM loop: the root model writes code, the sandbox runs it, outputs go back, until FINAL.

Data flows one way: RLM.completion -> the loop (this file) -> schedulers -> engines, and the loop drives
one sandbox session per (sub-)run. The context lives only in the sandbox; the root sees metadata.
Depth: the root runs at depth 0; its sub-calls run at depth 1. ``rlm_query`` starts a child loop one
level deeper while that depth is below ``max_depth``, otherwise it degrades to ``llm_query``; so the
default ``max_depth=1`` means plain sub-calls only, as in the reference library.
"""
from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import prompts
from .batching import rewrite_sibling_calls
from .engines import Engine, Request, Result, make_engine
from .models import find_card
from .conversation import Conversation
from .errors import InputError
from .prompts import Context
from .sandbox import CellResult, Limits, Sandbox
from .scheduler import Scheduler
from .trajectory import Trajectory
from .usage import UsageSummary, UsageTracker

STOP_REASONS = ("final", "max_iterations", "max_timeout", "max_tokens", "max_subcalls", "engine_error")


class RLMError(InputError):
    """Bad arguments to RLM or completion(), or a closed RLM."""


class ContextError(RLMError):
    """The prompt/context is empty or of an unsupported type."""


class BudgetExceeded(RuntimeError):
    """Raised inside a sub-call handler when a run's budget is used up; the sandbox shows it to the code."""


@dataclass
class RLMResult:
    response: str
    usage_summary: UsageSummary
    execution_time: float
    trajectory: list[dict[str, Any]]
    stopped_reason: str
    iterations: int = 0
    run_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.response


@dataclass
class _Run:
    """Everything one completion() shares with its children: budgets, accounting, log."""

    run_id: str
    started: float
    deadline: float | None
    trajectory: Trajectory
    usage: UsageTracker = field(default_factory=UsageTracker)
    subcalls: int = 0
    exhausted: str | None = None  # a budget that refused a sub-call ends the run at the next check
    lock: threading.Lock = field(default_factory=threading.Lock)


def _as_list(value: Any) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


class RLM:
    """A Recursive Language Model. Drop-in for the reference library's ``RLM`` user API.

    >>> rlm = RLM(backend="transformers", backend_kwargs={"model_name": None}, max_iterations=10)
    >>> rlm.completion(long_text, root_prompt="Who signed the contract?").response
    """

    def __init__(self, backend: str = "transformers", backend_kwargs: dict[str, Any] | None = None, *,
                 other_backends: str | list[str] | None = None,
                 other_backend_kwargs: dict[str, Any] | list[dict[str, Any]] | None = None,
                 max_depth: int = 1, max_iterations: int = 20, max_timeout: float | None = None,
                 max_tokens: int | None = None, max_subcalls: int | None = None,
                 output_limit: int = 20_000, sandbox_limits: Limits | None = None,
                 custom_system_prompt: str | None = None, trajectory_path: str | Path | None = None,
                 verbose: bool = False, on_event: Callable[[dict[str, Any]], None] | None = None,
                 implicit_batching: bool = True, scheduler_kwargs: dict[str, Any] | None = None,
                 sub_max_tokens: int | None = None, engine: Engine | None = None,
                 sub_engine: Engine | None = None) -> None:
        if max_iterations < 1 or max_depth < 1:
            raise RLMError("max_iterations and max_depth must be at least 1")
        for name, value in (("max_timeout", max_timeout), ("max_tokens", max_tokens), ("output_limit", output_limit)):
            if value is not None and value <= 0:
                raise RLMError(f"{name} must be positive (or None for no limit), got {value!r}")
        if max_subcalls is not None and max_subcalls < 0:
            raise RLMError(f"max_subcalls must be >= 0, got {max_subcalls!r}")
        self.backend = backend
        self.backend_kwargs = dict(backend_kwargs or {})
        self.engine = engine or make_engine(backend, **self.backend_kwargs)
        others, other_kwargs = _as_list(other_backends), _as_list(other_backend_kwargs)
        if sub_engine is not None:
            self.sub_engine = sub_engine
        elif others:
            kwargs = other_kwargs[0] if other_kwargs else {}
            same = others[0] == backend and kwargs == self.backend_kwargs
            try:
                self.sub_engine = self.engine if same else make_engine(others[0], **kwargs)
            except BaseException:
                if engine is None:  # do not strand a loaded root model (GPU memory) on a bad sub-backend
                    self.engine.close()
                raise
        else:
            self.sub_engine = self.engine
        self._closed = False
        sched_kwargs = dict(scheduler_kwargs or {})
        self.scheduler = Scheduler(self.engine, **sched_kwargs)
        self.sub_scheduler = self.scheduler if self.sub_engine is self.engine else Scheduler(self.sub_engine, **sched_kwargs)
        self.max_depth, self.max_iterations = max_depth, max_iterations
        self.max_timeout, self.max_tokens, self.max_subcalls = max_timeout, max_tokens, max_subcalls
        self.output_limit = output_limit
        self.sandbox_limits = sandbox_limits or Limits(output_chars=output_limit)
        self.custom_system_prompt = custom_system_prompt
        self.trajectory_path = Path(trajectory_path) if trajectory_path else None
        self.implicit_batching = implicit_batching
        self.listeners: list[Callable[[dict[str, Any]], None]] = [on_event] if on_event else []
        if verbose:
            from .display import VerbosePrinter
            self.listeners.append(VerbosePrinter())
        self._file_lock = threading.Lock()
        card = find_card(self.engine.model_name) if self.engine.model_name else None
        self._root_sampling = dict(card.sampling) if card else {"max_tokens": 2048, "temperature": 0.0}
        self._root_budget_tokens = card.max_prompt_tokens if card else max(4096, self.engine.context_length // 2 or 32768)
        sub_card = find_card(self.sub_engine.model_name) if self.sub_engine.model_name else None
        self._sub_max_tokens = sub_max_tokens or (sub_card.sampling.get("max_tokens", 512) if sub_card else 1024)

    # ---- public API -------------------------------------------------------------------------------------
    def completion(self, prompt: Context, root_prompt: str | None = None) -> RLMResult:
        """Answer ``root_prompt`` about ``prompt`` (the context: a str, a list of str or a dict of str)."""
        if self._closed:
            raise RLMError("this RLM is closed")
        context = _check_context(prompt)
        started = time.time()
        run_id = uuid.uuid4().hex[:12]
        trajectory = Trajectory(self.trajectory_path, listeners=self.listeners, lock=self._file_lock, run_id=run_id)
        run = _Run(run_id=run_id, started=started, trajectory=trajectory,
                   deadline=started + self.max_timeout if self.max_timeout is not None else None)
        trajectory.log("run_start", config=self._public_config(), question=root_prompt)
        try:
            answer, reason, iterations = self._solve(context, root_prompt, depth=0, run=run)
        except BaseException as exc:
            trajectory.log("error", error=f"{type(exc).__name__}: {exc}", seconds=round(time.time() - started, 3))
            trajectory.close()
            raise
        finally:
            # Run ids are never reused: anything still queued for this run (a child's stray thread) fails fast.
            self.scheduler.cancel(run_id, reject_new=True)
            if self.sub_scheduler is not self.scheduler:
                self.sub_scheduler.cancel(run_id, reject_new=True)
        summary = run.usage.summary()
        elapsed = time.time() - started
        trajectory.log("final", answer=answer, stopped_reason=reason, iterations=iterations,
                       usage=summary.to_dict(), seconds=round(elapsed, 3))
        trajectory.close()
        return RLMResult(response=answer, usage_summary=summary, execution_time=elapsed,
                         trajectory=trajectory.events, stopped_reason=reason, iterations=iterations,
                         run_id=run_id, metadata={"model": self.engine.model_name,
                                                  "sub_model": self.sub_engine.model_name})

    def close(self) -> None:
        self._closed = True
        self.scheduler.close()
        if self.sub_scheduler is not self.scheduler:
            self.sub_scheduler.close()
        self.engine.close()
        if self.sub_engine is not self.engine:
            self.sub_engine.close()

    def __enter__(self) -> "RLM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the loop ---------------------------------------------------------------------------------------
    def _solve(self, context: Context, question: str | None, depth: int, run: _Run) -> tuple[str, str, int]:
        """One (sub-)run: returns (answer, stopped_reason, iterations)."""
        info = prompts.describe_context(context, self.engine.count_tokens)
        run.trajectory.log("context", depth=depth, metadata=info.to_dict())
        convo = Conversation.start(self.engine, question, info, self.output_limit, self.custom_system_prompt,
                                   self._root_budget_tokens, self.sub_engine.context_length or 32_768)
        with Sandbox(context=context, limits=self.sandbox_limits,
                     llm_handler=lambda ps: self._llm_handler(ps, depth + 1, run),
                     rlm_handler=lambda p, c=None: self._rlm_handler(p, c, depth + 1, run)) as sandbox:
            for iteration in range(1, self.max_iterations + 1):
                if reason := self._budget_exhausted(run):
                    return self._ask_for_final(convo, sandbox, reason, depth, run, iteration - 1)
                reply = self._root_turn(convo, depth, iteration, run)
                if reply is None:
                    return self._ask_for_final(convo, sandbox, "engine_error", depth, run, iteration)
                answer, feedback = self._act(convo, reply, sandbox, depth, iteration, run)
                if answer is not None:
                    return answer, "final", iteration
                convo.add_turn(reply, feedback)
            return self._ask_for_final(convo, sandbox, "max_iterations", depth, run, self.max_iterations)

    def _root_turn(self, convo: Conversation, depth: int, iteration: int, run: _Run) -> str | None:
        request = convo.request(self._root_sampling)
        for attempt in range(2):  # one retry: a transient engine failure should not end the run
            result = self._call_root(request, depth, iteration, run, self._wait_limit(run), attempt=attempt)
            if result.ok:
                return result.text
        return None

    def _call_root(self, request: Request, depth: int, iteration: int, run: _Run, timeout: float | None,
                   **fields: Any) -> Result:
        """One root-model call: through the scheduler, counted, and logged as a root_turn event."""
        started = time.time()
        result = self.scheduler.submit([request], run.run_id, timeout=timeout)[0]
        self._account(result, self.engine.model_name, depth, "root", run)
        run.trajectory.log("root_turn", depth=depth, iteration=iteration, prompt_tokens=result.usage.prompt_tokens,
                           cached_tokens=result.usage.cached_tokens, reply=result.text, error=result.error,
                           seconds=round(time.time() - started, 3), **fields)
        return result

    def _act(self, convo: Conversation, reply: str, sandbox: Sandbox, depth: int, iteration: int,
             run: _Run) -> tuple[str | None, str]:
        """Run the reply's code and return (final answer or None, feedback text for the root)."""
        parsed = convo.parse(reply)
        if not parsed.code_blocks:
            if parsed.final_answer is not None:
                if parsed.final_is_name:  # FINAL(result) names a REPL variable when one exists
                    cell = self._run_cell(f"FINAL_VAR({parsed.final_answer!r})", sandbox, depth, iteration, run)
                    if cell.final is not None:
                        return cell.final, ""
                return parsed.final_answer, ""
            if parsed.final_var is not None:
                cell = self._run_cell(f"FINAL_VAR({parsed.final_var!r})", sandbox, depth, iteration, run)
                return cell.final, convo.feedback([self._cell_text(cell)])
            return None, convo.feedback([], [prompts.NO_CODE_NUDGE])
        outputs: list[str] = []
        for code in parsed.code_blocks:
            cell = self._run_cell(code, sandbox, depth, iteration, run)
            if cell.final is not None:
                return cell.final, ""
            outputs.append(self._cell_text(cell))
            if self._budget_exhausted(run):
                break
        if parsed.final_var is not None:  # FINAL_VAR after code names a variable that code just computed
            cell = self._run_cell(f"FINAL_VAR({parsed.final_var!r})", sandbox, depth, iteration, run)
            if cell.final is not None:
                return cell.final, ""
            outputs.append(self._cell_text(cell))
        notes = [prompts.IGNORED_FINAL] if parsed.final_answer is not None else []
        return None, convo.feedback(outputs, notes)

    def _run_cell(self, code: str, sandbox: Sandbox, depth: int, iteration: int, run: _Run) -> CellResult:
        rewrites = 0
        if self.implicit_batching:
            code_to_run, rewrites = rewrite_sibling_calls(code, max_prompts=self.sandbox_limits.max_prompts_per_call)
        else:
            code_to_run = code
        cell = sandbox.run(code_to_run)
        run.trajectory.log("cell", depth=depth, iteration=iteration, code=code, batched_rewrites=rewrites,
                           stdout=cell.stdout, error=cell.error, final=cell.final, timed_out=cell.timed_out,
                           restored=cell.restored, seconds=round(cell.seconds, 3))
        return cell

    def _cell_text(self, cell: CellResult) -> str:
        parts = [cell.stdout.rstrip("\n")] if cell.stdout.strip() else []
        if cell.error:
            parts.append(cell.error.rstrip("\n"))
        if cell.restored:
            parts.append("[the cell was stopped at a limit; variables are as they were before it ran]")
        return "\n".join(parts) or "(no output)"

    def _ask_for_final(self, convo: Conversation, sandbox: Sandbox, reason: str, depth: int, run: _Run,
                       iterations: int) -> tuple[str, str, int]:
        """A budget ended the run: ask the root once for its best answer from what it has seen."""
        convo.add_budget_stop(reason)
        # The closing request gets a short grace period of its own even when the time budget is spent.
        result = self._call_root(convo.request(self._root_sampling), depth, iterations + 1, run,
                                 None if run.deadline is None else 120.0, final_request=True)
        if not result.ok:
            return "", reason, iterations
        parsed = convo.parse(result.text)
        if parsed.final_answer is not None:
            return parsed.final_answer, reason, iterations
        name = parsed.final_var
        if name is None and parsed.code_blocks:  # the model answered with FINAL inside code anyway
            for code in parsed.code_blocks:
                if "FINAL" in code:
                    cell = self._run_cell(code, sandbox, depth, iterations + 1, run)
                    if cell.final is not None:
                        return cell.final, reason, iterations
        if name is not None:
            cell = self._run_cell(f"FINAL_VAR({name!r})", sandbox, depth, iterations + 1, run)
            if cell.final is not None:
                return cell.final, reason, iterations
        # No final answer in the reply: its prose is the best partial answer, never its code.
        return _prose(result.text), reason, iterations

    # ---- budgets and accounting -------------------------------------------------------------------------
    def _wait_limit(self, run: _Run) -> float | None:
        """How long an engine call may wait: the rest of the time budget (at least a second), else no limit."""
        return None if run.deadline is None else max(1.0, run.deadline - time.time())

    def _budget_exhausted(self, run: _Run) -> str | None:
        if run.exhausted:
            return run.exhausted
        if run.deadline is not None and time.time() >= run.deadline:
            return "max_timeout"
        if self.max_tokens is not None and run.usage.total_tokens >= self.max_tokens:
            return "max_tokens"
        if self.max_subcalls is not None and run.subcalls >= self.max_subcalls:
            return "max_subcalls"
        return None

    def _account(self, result: Result, model: str, depth: int, role: str, run: _Run) -> None:
        if result.ok and result.usage.calls == 0:  # the scheduler answered from its memo: no engine work
            run.usage.add_memo_hit()
        run.usage.add(result.usage, model, depth, role)

    def _reserve_subcalls(self, count: int, run: _Run) -> None:
        with run.lock:
            if self.max_subcalls is not None and run.subcalls + count > self.max_subcalls:
                left = self.max_subcalls - run.subcalls
                if left <= 0:
                    run.exhausted = "max_subcalls"
                    raise BudgetExceeded(f"max_subcalls budget ({self.max_subcalls}) used up; call FINAL with what you have")
                raise BudgetExceeded(f"max_subcalls budget: {count} sub-calls requested but only {left} of "
                                     f"{self.max_subcalls} left; ask fewer")
            run.subcalls += count
        if reason := self._budget_exhausted(run):
            if reason != "max_subcalls":
                raise BudgetExceeded(f"{reason} budget used up; call FINAL with what you have")

    # ---- sub-call handlers (called by the sandbox, in the thread running the cell) ----------------------
    def _llm_handler(self, prompts_in: list[str], depth: int, run: _Run) -> list[str]:
        self._reserve_subcalls(len(prompts_in), run)
        fmt = self.sub_engine.prompt_format
        sampling = {"max_tokens": self._sub_max_tokens, "temperature": 0.0}
        if fmt == "completion":
            requests = [Request.completion(prompts.subcall_prompt(p, fmt), stop=prompts.SUBCALL_COMPLETION_STOP, **sampling)
                        for p in prompts_in]
        else:
            requests = [Request.chat([{"role": "user", "content": p}], **sampling) for p in prompts_in]
        started = time.time()
        results = self.sub_scheduler.submit(requests, run.run_id, timeout=self._wait_limit(run))
        elapsed = round(time.time() - started, 3)
        answers: list[str] = []
        for prompt, result in zip(prompts_in, results):
            self._account(result, self.sub_engine.model_name, depth, "sub", run)
            run.trajectory.log("subcall", kind="llm", depth=depth, prompt=prompt, response=result.text,
                               error=result.error, usage=result.usage, seconds=elapsed, batch=len(prompts_in))
            answers.append(result.text.strip() if result.ok else f"[llm_query error: {result.error}]")
        return answers

    def _rlm_handler(self, prompt: str, context: Context | None, depth: int, run: _Run) -> str:
        if depth >= self.max_depth:  # at the depth limit a child RLM degrades to a plain sub-call
            text = prompt if context is None else f"{prompt}\n\n{_flatten(context)}"
            return self._llm_handler([text], depth, run)[0]
        self._reserve_subcalls(1, run)
        child_context: Context = context if context is not None else prompt
        question = prompt if context is not None else None
        started = time.time()
        run.trajectory.log("child_start", depth=depth, question=question)
        try:
            answer, reason, iterations = self._solve(_check_context(child_context), question, depth, run)
        except ContextError as exc:
            return f"[rlm_query error: {exc}]"
        run.trajectory.log("subcall", kind="rlm", depth=depth, prompt=prompt, response=answer,
                           stopped_reason=reason, iterations=iterations, seconds=round(time.time() - started, 3))
        if reason != "final":  # tell the parent's code that this is a partial answer, and why
            return f"[rlm_query stopped at {reason}] {answer}".rstrip()
        return answer

    def _public_config(self) -> dict[str, Any]:
        secret_words = ("key", "token", "secret", "password")
        kwargs = {k: ("***" if any(w in k.lower() for w in secret_words) else v)
                  for k, v in self.backend_kwargs.items() if not callable(v)}
        return {"backend": self.backend, "backend_kwargs": kwargs, "model": self.engine.model_name,
                "sub_model": self.sub_engine.model_name, "max_depth": self.max_depth,
                "max_iterations": self.max_iterations, "max_timeout": self.max_timeout, "max_tokens": self.max_tokens,
                "max_subcalls": self.max_subcalls, "output_limit": self.output_limit,
                "implicit_batching": self.implicit_batching}


def _prose(reply: str) -> str:
    """A reply without its fenced code blocks."""
    return re.sub(r"```.*?(?:```|\Z)", "", reply, flags=re.DOTALL).strip()


def _flatten(context: Context) -> str:
    if isinstance(context, dict):
        return "\n\n".join(f"## {k}\n{v}" for k, v in context.items())
    return context if isinstance(context, str) else "\n\n".join(context)


def _check_context(prompt: Any) -> Context:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ContextError("the context is empty")
        return prompt
    if isinstance(prompt, (list, tuple)):
        if not prompt or not all(isinstance(p, str) for p in prompt):
            raise ContextError("a list context must be a non-empty list of str")
        if not any(p.strip() for p in prompt):
            raise ContextError("the context is empty")
        return list(prompt)
    if isinstance(prompt, dict):
        if not prompt or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompt.items()):
            raise ContextError("a dict context must map str names to str documents")
        if not any(v.strip() for v in prompt.values()):
            raise ContextError("the context is empty")
        return dict(prompt)
    raise ContextError(f"the context must be a str, a list of str or a dict of str, not {type(prompt).__name__}")
