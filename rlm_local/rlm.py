"""``RLM``: the setup of Recursive Language Model runs, and the result of one.

``RLM`` owns what lasts across completions: the engines (it closes only those it created), each engine's
model card (resolved once), the engines' shared schedulers (one per engine, process-wide, see
scheduling/registry.py) and the options. Each ``completion()`` makes a ``Run`` (loop/run.py) with its own ``Budget``,
usage, trajectory, conversation and sandbox: that is where the loop lives.
Depth: the root runs at depth 0 (or at ``depth``); its sub-calls run one level deeper. ``rlm_query``
starts a child run while that depth is below ``max_depth``, otherwise it degrades to ``llm_query``; so
the default ``max_depth=1`` means plain sub-calls only, as in the reference library.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engines import DEFAULT_BACKEND, Engine, make_engine
from .errors import RLMError
from .loop import prompts
from .loop.formats import format_named
from .loop.persistent import PersistentREPL
from .loop.prompts import Context, ContextError, check_context
from .loop.run import STOP_REASONS, Budget, BudgetExceeded, Model, Outcome, Run, Settings, SetupError
from .models import find_card
from .runlog.events import Event, RunError, RunFinal, RunStart
from .runlog.trajectory import Trajectory
from .runlog.usage import UsageSummary, UsageTracker
from .sandbox import Limits, SandboxPool, split_tools
from .scheduling import registry as schedulers

__all__ = ["RLM", "RLMError", "RLMResult", "ContextError", "BudgetExceeded", "SetupError", "STOP_REASONS"]

# The reference library's other execution environments; rlm-local runs code only in its own sandbox.
REFERENCE_ENVIRONMENTS = ("docker", "modal", "prime", "daytona", "e2b")


@dataclass
class RLMResult:
    """What ``completion()`` returns; the reference library's fields plus the run's story."""

    response: str
    usage_summary: UsageSummary
    execution_time: float
    trajectory: list[dict[str, Any]]
    stopped_reason: str
    iterations: int = 0
    run_id: str = ""
    root_model: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.response

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the reference's keys (root_model, response, usage_summary, execution_time) and ours;
        the trajectory is left out (it has its own file), and so is the context."""
        return {
            "root_model": self.root_model,
            "response": self.response,
            "usage_summary": self.usage_summary.to_dict(),
            "execution_time": round(self.execution_time, 3),
            "stopped_reason": self.stopped_reason,
            "iterations": self.iterations,
            "run_id": self.run_id,
            "metadata": self.metadata,
        }


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


class RLM:
    """A Recursive Language Model. Drop-in for the reference library's ``RLM`` user API.

    >>> rlm = RLM(backend="llamacpp", backend_kwargs={"model_name": None}, max_iterations=10)
    >>> rlm.completion(long_text, root_prompt="Who signed the contract?").response
    """

    def __init__(
        self,
        backend: str = DEFAULT_BACKEND,
        backend_kwargs: dict[str, Any] | None = None,
        *,
        environment: str = "local",
        environment_kwargs: dict[str, Any] | None = None,
        depth: int = 0,
        max_depth: int = 1,
        max_iterations: int = 20,
        max_timeout: float | None = None,
        max_tokens: int | None = None,
        max_subcalls: int | None = None,
        max_errors: int | None = None,
        max_budget: float | None = None,
        custom_system_prompt: str | None = None,
        other_backends: str | list[str] | None = None,
        other_backend_kwargs: dict[str, Any] | list[dict[str, Any]] | None = None,
        logger: Any = None,
        verbose: bool = False,
        persistent: bool = False,
        custom_tools: dict[str, Any] | None = None,
        output_limit: int = 20_000,
        sandbox_limits: Limits | None = None,
        sandbox_pool: int | SandboxPool | None = None,
        trajectory_path: str | Path | None = None,
        on_event: Callable[[Event], None] | None = None,
        implicit_batching: bool = True,
        scheduler_kwargs: dict[str, Any] | None = None,
        sub_max_tokens: int | None = None,
        engine: Engine | None = None,
        sub_engine: Engine | None = None,
    ) -> None:
        _check_reference_options(environment, environment_kwargs, max_budget)
        _check_pool(sandbox_pool)
        tools = _check_tools(custom_tools)
        if tools:
            custom_system_prompt = "\n\n".join(p for p in (custom_system_prompt, prompts.tools_prompt(tools)) if p)
        if max_iterations < 1 or max_depth < 1 or depth < 0:
            raise RLMError("max_iterations and max_depth must be at least 1, and depth at least 0")
        for name, value in (
            ("max_timeout", max_timeout),
            ("max_tokens", max_tokens),
            ("output_limit", output_limit),
            ("max_errors", max_errors),
        ):
            if value is not None and value <= 0:
                raise RLMError(f"{name} must be positive (or None for no limit), got {value!r}")
        if max_subcalls is not None and max_subcalls < 0:
            raise RLMError(f"max_subcalls must be >= 0, got {max_subcalls!r}")
        self.backend, self.backend_kwargs = backend, dict(backend_kwargs or {})
        self.environment, self.depth, self.max_depth, self.max_iterations = (
            environment,
            depth,
            max_depth,
            max_iterations,
        )
        self.max_timeout, self.max_tokens, self.max_subcalls, self.max_errors = (
            max_timeout,
            max_tokens,
            max_subcalls,
            max_errors,
        )
        self.trajectory_path = Path(trajectory_path) if trajectory_path else None
        self.listeners: list[Callable[[Event], None]] = [on_event] if on_event else []
        self.log_dir = _use_logger(logger, self.listeners)
        if verbose:
            from .runlog.display import VerbosePrinter

            self.listeners.append(VerbosePrinter())
        self._owned: list[Engine] = []  # engines this RLM created, and so closes
        self._sharing: list[Engine] = []  # engines whose shared scheduler this RLM holds
        self._file_lock = threading.Lock()
        self._runs: dict[str, Run] = {}  # completions under way, for cancel()
        self._cancelled: set[str] = set()  # run ids cancelled before they started
        self._closed = False
        self.persistent = PersistentREPL() if persistent else None  # one REPL across completions
        try:
            self.engine = engine or self._make(backend, self.backend_kwargs)
            self.sub_engine = sub_engine or self._sub_engine(_as_list(other_backends), _as_list(other_backend_kwargs))
            sched = dict(scheduler_kwargs or {})
            root = _resolve(self.engine, self._scheduler(self.engine, sched), sub_max_tokens)
            sub = (
                root
                if self.sub_engine is self.engine
                else _resolve(self.sub_engine, self._scheduler(self.sub_engine, sched), sub_max_tokens)
            )
        except BaseException:
            self.close()  # do not strand a loaded model (GPU memory) or a scheduler on a bad argument
            raise
        pool = SandboxPool(sandbox_pool) if isinstance(sandbox_pool, int) and sandbox_pool else None
        self._own_pool = pool  # closed with this RLM; a SandboxPool given by the caller is the caller's
        shared = sandbox_pool if isinstance(sandbox_pool, SandboxPool) else None
        self.settings = Settings(
            root=root,
            sub=sub,
            max_depth=max_depth,
            output_limit=output_limit,
            sandbox_limits=sandbox_limits or Limits(output_chars=output_limit),
            custom_system_prompt=custom_system_prompt,
            implicit_batching=implicit_batching,
            tools=tools,
            sandbox_pool=pool or shared,
        )

    def _make(self, backend: str, kwargs: dict[str, Any]) -> Engine:
        engine = make_engine(backend, **kwargs)
        self._owned.append(engine)
        return engine

    def _scheduler(self, engine: Engine, settings: dict[str, Any]) -> Any:
        scheduler = schedulers.acquire(engine, **settings)
        self._sharing.append(engine)
        return scheduler

    def _sub_engine(self, others: list[str], other_kwargs: list[dict[str, Any]]) -> Engine:
        if not others:
            return self.engine
        kwargs = other_kwargs[0] if other_kwargs else {}
        if others[0] == self.backend and kwargs == self.backend_kwargs:
            return self.engine
        return self._make(others[0], kwargs)

    # ---- public API -------------------------------------------------------------------------------------
    def completion(
        self,
        prompt: Context | list[dict[str, str]],
        root_prompt: str | None = None,
        *,
        run_id: str | None = None,
        sandbox_provider: Callable[..., Any] | None = None,
    ) -> RLMResult:
        """Answer ``root_prompt`` about ``prompt`` (the context: a str, a list of str, a list of chat
        messages or a dict of str). Raises ContextError for an unusable context, RLMError when closed.
        ``run_id`` names the run (``cancel(run_id)`` stops it); ``sandbox_provider(run, context)`` gives
        the depth-0 run a REPL to use, e.g. a session's kept-alive one (see Run.sandbox_provider)."""
        if self._closed:
            raise RLMError("this RLM is closed")
        context = check_context(prompt)
        started = time.monotonic()
        run_id = run_id or uuid.uuid4().hex[:12]
        path = self.trajectory_path or (
            self.log_dir / f"rlm_{time.strftime('%Y%m%d_%H%M%S')}_{run_id}.jsonl" if self.log_dir else None
        )
        trajectory = Trajectory(path, listeners=self.listeners, lock=self._file_lock, run_id=run_id)
        budget = Budget(
            max_iterations=self.max_iterations,
            max_timeout=self.max_timeout,
            max_tokens=self.max_tokens,
            max_subcalls=self.max_subcalls,
            max_errors=self.max_errors,
        )
        usage = UsageTracker()
        run = Run(self.settings, budget, usage, trajectory, run_id, depth=self.depth)
        question = root_prompt
        if self.persistent is not None and sandbox_provider is None:
            sandbox_provider = self.persistent.provider
            if note := self.persistent.follow_up_note():
                question = f"{root_prompt}\n\n{note}" if root_prompt else note
        run.sandbox_provider = sandbox_provider
        with self._file_lock:
            self._runs[run_id] = run
            if run_id in self._cancelled:  # cancelled before it started
                budget.cancel()
        trajectory.log(RunStart(config=self._public_config(), question=question))
        try:
            if self.depth >= self.max_depth:  # the reference's rule: at the depth limit an RLM is a plain LM
                outcome = Outcome(run.answer_directly(context, root_prompt), "final", 0)
            else:
                outcome = run.solve(context, question)
                if self.persistent is not None and sandbox_provider == self.persistent.provider:
                    self.persistent.record(root_prompt, outcome.answer)
        except BaseException as exc:
            trajectory.log(RunError(error=f"{type(exc).__name__}: {exc}", seconds=round(time.monotonic() - started, 3)))
            trajectory.close()
            raise
        finally:
            with self._file_lock:
                self._runs.pop(run_id, None)
            # Run ids are never reused: anything still queued for this run (a child's stray thread) fails fast.
            for model in {id(m.scheduler): m for m in (self.settings.root, self.settings.sub)}.values():
                model.scheduler.cancel(run_id, reject_new=True)
        summary = usage.summary()
        elapsed = time.monotonic() - started
        trajectory.log(
            RunFinal(
                answer=outcome.answer,
                stopped_reason=outcome.stopped_reason,
                iterations=outcome.iterations,
                usage=summary.to_dict(),
                seconds=round(elapsed, 3),
            )
        )
        trajectory.close()
        return RLMResult(
            response=outcome.answer,
            usage_summary=summary,
            execution_time=elapsed,
            trajectory=trajectory.events,
            stopped_reason=outcome.stopped_reason,
            iterations=outcome.iterations,
            run_id=run_id,
            root_model=self.settings.root.name,
            metadata={"model": self.settings.root.name, "sub_model": self.settings.sub.name},
        )

    def cancel(self, run_id: str) -> bool:
        """Stop a running completion (from another thread): its budget ends it at the next check with
        ``stopped_reason="cancelled"`` and its queued sub-calls and root turns are dropped. A ``run_id``
        not started yet is remembered and stops at its start. True when a going run was cancelled."""
        with self._file_lock:
            run = self._runs.get(run_id)
            if run is None:  # not started yet: it stops as soon as it starts
                self._cancelled.add(run_id)
                return False
        run.budget.cancel()
        for model in {id(m.scheduler): m for m in (self.settings.root, self.settings.sub)}.values():
            model.scheduler.cancel(run_id)
        return True

    def close(self) -> None:
        """Release this RLM's hold on the shared schedulers and close the engines it created (never an
        engine it was given). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.persistent is not None:
            self.persistent.close()
        own_pool = getattr(self, "_own_pool", None)  # (unset when the constructor failed before it)
        if own_pool is not None:
            own_pool.close()
        for engine in self._sharing:
            schedulers.release(engine)
        for engine in self._owned:
            engine.close()

    def __enter__(self) -> RLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _public_config(self) -> dict[str, Any]:
        secret_words = ("key", "token", "secret", "password")
        kwargs = {
            k: ("***" if any(w in k.lower() for w in secret_words) else v)
            for k, v in self.backend_kwargs.items()
            if not callable(v)
        }
        s = self.settings
        return {
            "backend": self.backend,
            "backend_kwargs": kwargs,
            "model": s.root.name,
            "sub_model": s.sub.name,
            "environment": self.environment,
            "depth": self.depth,
            "max_depth": self.max_depth,
            "max_iterations": self.max_iterations,
            "max_timeout": self.max_timeout,
            "max_tokens": self.max_tokens,
            "max_subcalls": self.max_subcalls,
            "max_errors": self.max_errors,
            "output_limit": s.output_limit,
            "implicit_batching": s.implicit_batching,
        }


def _resolve(engine: Engine, scheduler: Any, sub_max_tokens: int | None) -> Model:
    """An engine's model card, looked up once: prompt format, sampling of root turns and of sub-calls
    (greedy, the card's answer length unless ``sub_max_tokens``), and the root's prompt budget."""
    card = find_card(engine.model_name) if engine.model_name else None
    root_sampling = dict(card.sampling) if card else {"max_tokens": 2048, "temperature": 0.0}
    sub_tokens = sub_max_tokens or (card.sampling.get("max_tokens", 512) if card else 1024)
    prompt_tokens = card.max_prompt_tokens if card else max(4096, engine.context_length // 2 or 32768)
    if engine.context_length:  # the engine's window (a llama.cpp slot) must hold the prompt and the reply
        room = engine.context_length - int(root_sampling.get("max_tokens", 2048)) - 64  # 64: template overhead
        prompt_tokens = max(256, min(prompt_tokens, room))
    return Model(
        engine=engine,
        scheduler=scheduler,
        name=engine.model_name,
        format=format_named(card.prompt_format if card else engine.prompt_format),
        root_sampling=root_sampling,
        sub_sampling={"max_tokens": sub_tokens, "temperature": 0.0},
        prompt_tokens=prompt_tokens,
        context_length=engine.context_length,
    )


def _check_pool(pool: object) -> None:
    """``sandbox_pool``: None or 0 (off), a number of pre-started sandbox workers, or a SandboxPool."""
    if pool is None or isinstance(pool, SandboxPool):
        return
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 0:
        raise RLMError(f"sandbox_pool must be a number of workers (0: none) or a SandboxPool, got {pool!r}")


def _check_tools(custom_tools: dict[str, Any] | None) -> dict[str, Any]:
    """The reference's ``custom_tools``: a callable becomes a REPL function run here in the caller's process
    (JSON arguments and result), anything else read-only JSON data (rules: ``sandbox.split_tools``);
    ``history`` is kept for persistent sessions."""
    if not custom_tools:
        return {}
    try:
        split_tools(custom_tools)
    except (TypeError, ValueError) as exc:
        raise RLMError(f"custom_tools: {exc}") from None
    if "history" in custom_tools:
        raise RLMError("custom_tools: 'history' cannot be a tool name (persistent sessions use it)")
    return dict(custom_tools)


def _check_reference_options(
    environment: str, environment_kwargs: dict[str, Any] | None, max_budget: float | None
) -> None:
    """The reference's options we take but cannot honour yet fail here, with the reason, never silently."""
    if environment in REFERENCE_ENVIRONMENTS:
        raise RLMError(
            f"environment={environment!r} is not available in rlm-local: code runs in its own local "
            "sandbox (a separate, restricted process); use environment='local'"
        )
    if environment != "local":
        raise RLMError(f"unknown environment {environment!r}; rlm-local runs code in environment='local'")
    if environment_kwargs:
        raise RLMError(
            f"environment_kwargs are not used by rlm-local's sandbox (got {sorted(environment_kwargs)}); "
            "set limits with sandbox_limits=Limits(...)"
        )
    if max_budget is not None:
        raise RLMError("max_budget is a cost in dollars, which local models do not have; use max_tokens")


def _use_logger(logger: Any, listeners: list[Callable[[Event], None]]) -> Path | None:
    """The reference's ``logger=``: its RLMLogger (anything with a ``log_dir``) gets one JSONL trajectory per
    completion in that directory (returned); a ``logging.Logger`` gets every event as a JSON line."""
    if logger is None:
        return None
    if isinstance(logger, logging.Logger):
        listeners.append(lambda ev: logger.info("%s", json.dumps(ev.to_dict(2000), default=str)))
        return None
    log_dir = getattr(logger, "log_dir", None)
    if isinstance(log_dir, (str, Path)):
        return Path(log_dir)
    raise RLMError(
        f"logger must be a logging.Logger or have a log_dir (like the reference's RLMLogger), "
        f"got {type(logger).__name__}"
    )
