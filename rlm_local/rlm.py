"""``RLM``: the setup of Recursive Language Model runs, and the result of one.

``RLM`` owns what lasts across completions: the engines (it closes only those it created), each engine's
model card (resolved once), the engines' shared schedulers (one per engine, process-wide, see
scheduling/registry.py) and the options. Each ``completion()`` makes a ``Run`` (loop/run.py) with its own ``Budget``,
usage, trajectory, conversation and sandbox: that is where the loop lives.
Depth: the root runs at depth 0 (or at ``depth``); its sub-calls run one level deeper. ``rlm_query``
starts a child run while that depth is below ``max_depth``, otherwise it degrades to ``llm_query``; so
the default ``max_depth=1`` means plain sub-calls only, as in the reference library.

The constructor takes the reference library's arguments first, in its order and with its meaning
(options.py lists each and how it is taken), then rlm-local's own (keyword-only). A budget that ends a
completion raises the reference's exception (errors.py: TimeoutExceededError, TokenLimitExceededError,
ErrorThresholdExceededError, CancellationError), carrying the best partial answer; ``raise_on_limit=False``
returns the result with its ``stopped_reason`` instead (the CLI, the service and the bench kit do).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__, defaults, options
from .engines import DEFAULT_BACKEND, Engine, make_engine
from .engines.client import ClientEngine, is_client
from .errors import CancellationError, RLMError
from .loop.hooks import Hooks
from .loop.levers import Levers
from .loop.persistent import PersistentREPL
from .loop.prompts import Context, ContextError, check_context
from .loop.run import STOP_REASONS, Budget, BudgetExceeded, Outcome, Run, Settings, SetupError
from .loop.settings import Model, resolve_model
from .loop.typed import AnswerFormat
from .models import find_card
from .runlog.events import Event, RunError, RunFinal, RunStart
from .runlog.records import RLMChatCompletion, RLMMetadata, RLMResult, public_kwargs
from .runlog.rlm_logger import IterationRecorder, RLMLogger
from .runlog.trajectory import Trajectory, context_digest
from .runlog.usage import UsageTracker
from .sandbox import Limits, SandboxPool
from .scheduling import registry as schedulers

logger = logging.getLogger("rlm_local.rlm")

__all__ = [
    "RLM",
    "RLMChatCompletion",
    "RLMError",
    "RLMLogger",
    "RLMResult",
    "ContextError",
    "BudgetExceeded",
    "SetupError",
    "STOP_REASONS",
    "get_client",
]


def get_client(backend: str, backend_kwargs: dict[str, Any] | None) -> Any:
    """The engine for a backend name and its kwargs; RLM makes every engine through this name (the
    reference's hook: its tests replace it to script the model). It may return a reference-style client
    (``completion(prompt) -> str``), which RLM wraps (engines/client.py)."""
    backend, kwargs = options.engine_args(backend, dict(backend_kwargs or {}))
    return make_engine(backend, **kwargs)


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


class RLM:
    """A Recursive Language Model: the reference library's ``RLM`` (same arguments, same meaning; see
    options.py for each) on local engines, with a sandboxed REPL.

    >>> rlm = RLM(backend="llamacpp", backend_kwargs={"model_name": None}, max_iterations=10)
    >>> rlm.completion(long_text, root_prompt="Who signed the contract?").response
    """

    def __init__(
        self,
        backend: str = DEFAULT_BACKEND,
        backend_kwargs: dict[str, Any] | None = None,
        environment: str = "local",
        environment_kwargs: dict[str, Any] | None = None,
        depth: int = 0,
        max_depth: int = defaults.MAX_DEPTH,
        max_iterations: int = defaults.MAX_ITERATIONS,
        max_budget: float | None = None,
        max_timeout: float | None = None,
        max_tokens: int | None = None,
        max_errors: int | None = None,
        custom_system_prompt: str | None = None,
        other_backends: str | list[str] | None = None,
        other_backend_kwargs: dict[str, Any] | list[dict[str, Any]] | None = None,
        logger: Any = None,
        verbose: bool = False,
        persistent: bool = False,
        custom_tools: dict[str, Any] | None = None,
        custom_sub_tools: dict[str, Any] | None = None,
        compaction: bool = False,
        compaction_threshold_pct: float = defaults.COMPACTION_THRESHOLD_PCT,
        max_concurrent_subcalls: int = defaults.MAX_CONCURRENT_SUBCALLS,
        on_subcall_start: Callable[[int, str, str], None] | None = None,
        on_subcall_complete: Callable[[int, str, float, str | None], None] | None = None,
        on_iteration_start: Callable[[int, int], None] | None = None,
        on_iteration_complete: Callable[[int, int, float], None] | None = None,
        sampling_args: dict[str, Any] | None = None,
        sub_sampling_args: dict[str, Any] | None = None,
        orchestrator: bool | None = None,
        user_prologue: str | None = None,
        *,
        max_subcalls: int | None = None,
        output_limit: int = defaults.OUTPUT_LIMIT,
        sandbox_limits: Limits | None = None,
        sandbox_pool: int | SandboxPool | None = None,
        trajectory_path: str | Path | None = None,
        on_event: Callable[[Event], None] | None = None,
        implicit_batching: bool = True,
        scheduler_kwargs: dict[str, Any] | None = None,
        sub_max_tokens: int | None = None,
        engine: Engine | Any | None = None,
        sub_engine: Engine | Any | None = None,
        raise_on_limit: bool = True,
        levers: Levers | dict[str, bool] | None = None,
    ) -> None:
        options.check_environment(environment, environment_kwargs, persistent)
        if max_budget is not None:
            raise RLMError("max_budget is a cost in dollars, which local models do not have; use max_tokens")
        tools, notes = options.split_tools(custom_tools)
        child_tools, child_notes = options.split_tools(custom_sub_tools)
        tools, child_tools = (
            options.check_tools(tools),
            (None if child_tools is None else options.check_tools(child_tools)),
        )
        root_args, sub_args = (
            options.sampling(sampling_args, "sampling_args"),
            options.sampling(sub_sampling_args, "sub_sampling_args"),
        )
        options.check_numbers(locals())
        _check_pool(sandbox_pool)
        self.backend, self.backend_kwargs = backend, dict(backend_kwargs or {})
        self.environment, self.depth, self.max_depth, self.max_iterations = (
            environment,
            depth,
            max_depth,
            max_iterations,
        )
        self.max_timeout, self.max_tokens, self.max_subcalls = max_timeout, max_tokens, max_subcalls
        self.max_errors, self.raise_on_limit, self.persistent = max_errors, raise_on_limit, bool(persistent)
        self.trajectory_path = Path(trajectory_path) if trajectory_path else None
        self.listeners: list[Callable[[Event], None]] = [on_event] if on_event else []
        self.logger = options.use_logger(logger, self.listeners)
        if verbose:
            from .runlog.display import VerbosePrinter

            self.listeners.append(VerbosePrinter())
        self._owned: list[Engine] = []  # engines this RLM created, and so closes
        self._sharing: list[Engine] = []  # engines whose shared scheduler this RLM holds
        self._file_lock = threading.Lock()
        self._runs: dict[str, Run] = {}  # completions under way, for cancel()
        self._cancelled: set[str] = set()  # run ids cancelled before they started
        self._closed = False
        self.session = PersistentREPL() if persistent else None  # one REPL across completions
        try:
            self.engine = self._engine(engine, backend, self.backend_kwargs)
            self.sub_engine = self._sub_engine(sub_engine, _as_list(other_backends), _as_list(other_backend_kwargs))
            sched = dict(scheduler_kwargs or {})
            root = resolve_model(self.engine, self._scheduler(self.engine, sched), sub_max_tokens, root_args, {})
            sub = (
                resolve_model(self.engine, root.scheduler, sub_max_tokens, root_args, sub_args)
                if self.sub_engine is self.engine
                else resolve_model(
                    self.sub_engine, self._scheduler(self.sub_engine, sched), sub_max_tokens, {}, sub_args
                )
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
            child_tools=child_tools,
            tool_notes={**child_notes, **notes},
            orchestrator=bool(orchestrator),
            user_prologue=user_prologue,
            compaction_threshold_pct=compaction_threshold_pct if compaction else None,
            max_concurrent_subcalls=max_concurrent_subcalls,
            hooks=Hooks(on_iteration_start, on_iteration_complete, on_subcall_start, on_subcall_complete),
            levers=_levers(root, levers),
            sandbox_pool=pool or shared,
        )
        if self.logger is not None:
            self.logger.log_metadata(self._metadata(other_backends))

    def _engine(self, given: Any, backend: str, kwargs: dict[str, Any]) -> Engine:
        """``given`` (an engine or a reference client, not ours to close), else one made by ``get_client``."""
        if given is not None:
            return ClientEngine(given, kwargs.get("model_name")) if is_client(given) else given
        made = get_client(backend, kwargs)
        name = kwargs.get("model_name")
        engine = ClientEngine(made, name if isinstance(name, str) else None) if is_client(made) else made
        self._owned.append(engine)
        return engine

    def _scheduler(self, engine: Engine, settings: dict[str, Any]) -> Any:
        scheduler = schedulers.acquire(engine, **settings)
        self._sharing.append(engine)
        return scheduler

    def _sub_engine(self, given: Any, others: list[str], other_kwargs: list[dict[str, Any]]) -> Engine:
        if given is not None:
            return self._engine(given, "", {})
        if not others:
            return self.engine
        if len(others) > 1:
            raise RLMError("other_backends takes one backend (the sub-call model), as in the reference")
        kwargs = other_kwargs[0] if other_kwargs else {}
        if others[0] == self.backend and kwargs == self.backend_kwargs:
            return self.engine
        return self._engine(None, others[0], kwargs)

    # ---- the reference's names --------------------------------------------------------------------------
    @property
    def _persistent_env(self) -> PersistentREPL | None:
        """The reference's name for the persistent session (``session``)."""
        return self.session

    # ---- public API -------------------------------------------------------------------------------------
    def completion(
        self,
        prompt: Context | list[dict[str, str]],
        root_prompt: str | None = None,
        *,
        response_format: Any = None,
        run_id: str | None = None,
        sandbox_provider: Callable[..., Any] | None = None,
    ) -> RLMResult:
        """Answer ``root_prompt`` about ``prompt`` (the context: a str, a list of str, a list of chat
        messages or a dict of str). ``response_format``: a pydantic model class or a JSON schema the final
        answer must match (loop/typed.py; ``result.parsed``). Raises ContextError for an unusable context,
        RLMError when closed, and a LimitExceededError subclass when a budget ends the run (unless
        ``raise_on_limit=False``). ``run_id`` names the run (``cancel(run_id)`` stops it);
        ``sandbox_provider(run, context)`` gives the depth-0 run a REPL to use (see Run.sandbox_provider)."""
        if self._closed:
            raise RLMError("this RLM is closed")
        context = check_context(prompt)
        answer_format = AnswerFormat(response_format) if response_format is not None else None
        started = time.monotonic()
        run_id = run_id or uuid.uuid4().hex[:12]
        trajectory = Trajectory(
            self.trajectory_path, listeners=list(self.listeners), lock=self._file_lock, run_id=run_id
        )
        if self.logger is not None:
            self.logger.clear_iterations()
            trajectory.listeners.append(IterationRecorder(self.logger, self.depth, self.settings.sub.name))
        budget = Budget(
            max_iterations=self.max_iterations,
            max_timeout=self.max_timeout,
            max_tokens=self.max_tokens,
            max_subcalls=self.max_subcalls,
            max_errors=self.max_errors,
        )
        usage = UsageTracker()
        run = Run(self.settings, budget, usage, trajectory, run_id, depth=self.depth)
        run.answer_format = answer_format
        question = root_prompt
        if answer_format is not None:
            question = "\n\n".join(p for p in (root_prompt, answer_format.instructions()) if p)
        persistent = self.session is not None and sandbox_provider is None
        if self.session is not None and persistent:
            sandbox_provider = self.session.provider
            if note := self.session.follow_up_note():
                question = f"{question}\n\n{note}" if question else note
        run.sandbox_provider = sandbox_provider
        with self._file_lock:
            self._runs[run_id] = run
            if run_id in self._cancelled:  # cancelled before it started
                budget.cancel()
        trajectory.log(
            RunStart(config=self._public_config(), question=question, context_sha256=context_digest(context))
        )
        try:
            outcome = self._solve(run, context, question, root_prompt)
            if self.session is not None and persistent and run.convo is not None:
                self.session.record(run.convo.history)
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
        return self._finish(run, outcome, prompt, started)

    def _solve(self, run: Run, context: Context, question: str | None, root_prompt: str | None) -> Outcome:
        if self.depth >= self.max_depth:  # the reference's rule: at the depth limit an RLM is a plain LM
            return Outcome(run.answer_directly(context, root_prompt), "final", 0)
        try:
            return run.finish_typed(run.solve(context, question))
        except KeyboardInterrupt:  # Ctrl-C: the reference's CancellationError (or, without raising, go on up)
            if not self.raise_on_limit:
                raise
            run.budget.cancel()
            raise CancellationError(None, "Execution cancelled by user (Ctrl+C)") from None

    def _finish(self, run: Run, outcome: Outcome, prompt: Any, started: float) -> RLMResult:
        summary = run.usage.summary()
        elapsed = time.monotonic() - started
        run.trajectory.log(
            RunFinal(
                answer=outcome.answer,
                stopped_reason=outcome.stopped_reason,
                iterations=outcome.iterations,
                usage=summary.to_dict(),
                seconds=round(elapsed, 3),
                answer_source=outcome.source,
                answer_grounded=outcome.grounded,
            )
        )
        run.trajectory.close()
        result = RLMResult(
            response=outcome.answer,
            usage_summary=summary,
            execution_time=elapsed,
            trajectory=run.trajectory.events,
            stopped_reason=outcome.stopped_reason,
            iterations=outcome.iterations,
            run_id=run.run_id,
            root_model=self.settings.root.name,
            metadata=self.logger.get_trajectory() if self.logger is not None else None,
            prompt=prompt,
            error=outcome.error,
            parsed=outcome.parsed,
            invalid_answer=outcome.invalid_answer,
            answer_source=outcome.source,
            answer_grounded=outcome.grounded,
        )
        if self.raise_on_limit:
            error = options.limit_error(outcome.stopped_reason, outcome.answer, self._limit_context(result, elapsed))
            if error is not None:
                error.result = result
                raise error
        return result

    def _limit_context(self, result: RLMResult, elapsed: float) -> dict[str, Any]:
        cells = [e for e in result.trajectory if e["event"] == "cell" and e.get("error")]
        return {
            "elapsed": elapsed,
            "timeout": self.max_timeout,
            "tokens": result.usage_summary.total.total_tokens,
            "max_tokens": self.max_tokens,
            "max_errors": self.max_errors,
            "last_error": cells[-1]["error"] if cells else None,
        }

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
        if self.session is not None:
            self.session.close()
            self.session = None
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
        s = self.settings
        return {
            "backend": self.backend,
            "backend_kwargs": public_kwargs(self.backend_kwargs),
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
            "compaction_threshold_pct": s.compaction_threshold_pct,
            "max_concurrent_subcalls": s.max_concurrent_subcalls,
            "orchestrator": s.orchestrator,
            "user_prologue": s.user_prologue,
            "custom_system_prompt": s.custom_system_prompt,
            "root_sampling": s.root.root_sampling,
            "sub_sampling": s.sub.sub_sampling,
            "prompt_format": s.root.format.name,
            "sub_prompt_format": s.sub.format.name,
            "context_length": s.root.context_length,
            "sub_context_length": s.sub.context_length,
            "levers": s.levers.to_dict(),
            "rlm_local": __version__,
        }

    def _metadata(self, other_backends: Any) -> RLMMetadata:
        return RLMMetadata(
            root_model=self.backend_kwargs.get("model_name") or self.settings.root.name or "unknown",
            max_depth=self.max_depth,
            max_iterations=self.max_iterations,
            backend=self.backend,
            backend_kwargs=public_kwargs(self.backend_kwargs),
            environment_type=self.environment,
            environment_kwargs={},
            other_backends=_as_list(other_backends) or None,
        )


def _levers(root: Model, explicit: Levers | dict[str, bool] | None) -> Levers:
    """The defaults, the root model card's ``[levers]``, then ``explicit``. A lever the engine cannot honour
    (``constrain`` without grammar support) is switched off with one warning line."""
    card = find_card(root.engine.model_name) if root.engine.model_name else None
    levers = Levers.resolve(card.extra.get("levers") if card else None, explicit)
    if levers.constrain and not (root.engine.supports_grammar and root.format.reply_grammar):
        logger.warning(
            "the constrain lever is off: the %s engine (%s format) cannot constrain replies with a grammar; "
            "replies are unconstrained",
            root.engine.backend,
            root.format.name,
        )
        levers = levers.with_overrides({"constrain": False})
    return levers


def _check_pool(pool: object) -> None:
    """``sandbox_pool``: None or 0 (off), a number of pre-started sandbox workers, or a SandboxPool."""
    if pool is None or isinstance(pool, SandboxPool):
        return
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 0:
        raise RLMError(f"sandbox_pool must be a number of workers (0: none) or a SandboxPool, got {pool!r}")
