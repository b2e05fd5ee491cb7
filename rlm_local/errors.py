"""The one exception base of rlm-local, and the logger every module writes to.

Everything the API raises on purpose derives from :class:`Error`, so ``except rlm_local.Error`` catches
every failure we report (bad input, a failing setup, an engine that cannot serve) and nothing else: an
exception of another type escaping the API is a bug. :class:`InputError` marks the caller's mistakes
(bad arguments, an empty context, a missing file); the CLI answers those with one line and exit code 2.

Logging: every module logs to the ``rlm_local`` logger tree (``logging.getLogger("rlm_local.rlm")`` and
so on). The library adds no handlers; applications configure logging as they like (the CLI writes a log
file, see :func:`log_to_file`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

logger = logging.getLogger("rlm_local")


class Error(Exception):
    """Base class of every exception the rlm-local API raises."""


class InputError(Error, ValueError):
    """The caller's input or configuration is wrong (a ValueError, so older ``except ValueError`` works)."""


class InputTypeError(InputError, TypeError):
    """An argument has the wrong type."""


F = TypeVar("F", bound=Callable[..., Any])


def input_errors(fn: F) -> F:
    """The boundary of an exported constructor or validator: a ``TypeError`` or ``ValueError`` it raises
    leaves as ``InputTypeError`` / ``InputError`` (still a ``TypeError`` / ``ValueError``), so every
    mistake a caller can make surfaces as an ``rlm_local.Error`` without each check naming the class."""

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Error:
            raise
        except TypeError as exc:
            raise InputTypeError(str(exc)) from exc
        except ValueError as exc:
            raise InputError(str(exc)) from exc

    return cast(F, checked)


# ---- the caller's mistakes (InputError: the CLI exits 2, the service answers 4xx) ----------------------------


class ModelNotFoundError(InputError):
    """The model name is neither a registered embedded model nor a local directory."""


class ContextError(InputError):
    """The prompt/context is empty or of an unsupported type."""


class DocumentError(InputError):
    """The input cannot be used as a context: missing, unreadable, binary or empty."""


class DocumentTooLarge(DocumentError):
    """The document is over a cap: characters of text it extracts to, bytes or files a zip unpacks to."""


class UploadError(DocumentError):
    """The upload cannot be stored: too big, binary, empty, an unreadable PDF or zip."""


class RLMError(InputError):
    """Bad arguments to RLM or completion(), or a closed RLM."""


class ConfigError(InputError):
    """The service configuration is wrong (the message names the key)."""


class BenchError(InputError):
    """A benchmark input the kit cannot use: unknown family or method, bad lengths, a corrupt results file."""


# ---- what failed on our side or the machine's (the CLI exits 1) --------------------------------------------


class EngineError(Error, RuntimeError):
    """An engine could not be created or could not serve at all (not a per-request failure)."""


class EngineConfigError(EngineError, InputError):
    """An engine was asked for with arguments it cannot take (an unknown backend, an unknown parameter): an
    EngineError, as before, and the caller's mistake (the CLI exits 2)."""


class ModelLoadError(Error, RuntimeError):
    """The model exists but could not be loaded or converted."""


class PackagedModelError(ModelLoadError):
    """A packaged model's parts are missing, unreadable or do not add up to the expected file."""


class SandboxError(Error, RuntimeError):
    """The sandbox could not be started, was used after close(), or failed in a way no cell result can
    describe. ``Sandbox.run`` returns a CellResult or raises this, nothing else (bar KeyboardInterrupt)."""


class SetupError(Error, RuntimeError):
    """Something a run needs could not start (the sandbox worker)."""


class BudgetExceeded(Error, RuntimeError):
    """Raised inside a sub-call handler when the run's budget is used up; the sandbox shows it to the code."""


# ---- a budget ended a completion (the reference library's exceptions, same names and attributes) -------------
# ``RLM(raise_on_limit=True)``, the default as in the reference, raises these from ``completion()``; with
# ``raise_on_limit=False`` the result comes back with ``stopped_reason`` instead. Each carries the best
# partial answer (``partial_answer``: the root's reply to the closing request, else its last prose).


class LimitExceededError(Error, RuntimeError):
    """Base of the limit exceptions; ``stopped_reason`` names the budget, ``result`` is the run's result."""

    stopped_reason = ""

    def __init__(self, message: str, partial_answer: str | None = None) -> None:
        super().__init__(message)
        self.partial_answer = partial_answer
        self.result: object | None = None  # the RLMResult the run would have returned


class TimeoutExceededError(LimitExceededError):
    """``max_timeout`` seconds passed."""

    stopped_reason = "max_timeout"

    def __init__(
        self, elapsed: float, timeout: float, partial_answer: str | None = None, message: str | None = None
    ) -> None:
        self.elapsed, self.timeout = elapsed, timeout
        super().__init__(message or f"Timeout exceeded: {elapsed:.1f}s of {timeout:.1f}s limit", partial_answer)


class TokenLimitExceededError(LimitExceededError):
    """``max_tokens`` (input + output, children included) were used."""

    stopped_reason = "max_tokens"

    def __init__(
        self, tokens_used: int, token_limit: int, partial_answer: str | None = None, message: str | None = None
    ) -> None:
        self.tokens_used, self.token_limit = tokens_used, token_limit
        text = message or f"Token limit exceeded: {tokens_used:,} of {token_limit:,} tokens"
        super().__init__(text, partial_answer)


class BudgetExceededError(LimitExceededError):
    """The reference's dollar budget (``max_budget``). Never raised here: local models cost no dollars, and
    ``max_budget`` is refused at construction; defined so that ``except BudgetExceededError`` still works."""

    stopped_reason = "max_budget"

    def __init__(self, spent: float, budget: float, message: str | None = None) -> None:
        self.spent, self.budget = spent, budget
        super().__init__(message or f"Budget exceeded: spent ${spent:.6f} of ${budget:.6f} budget")


class ErrorThresholdExceededError(LimitExceededError):
    """``max_errors`` consecutive turns whose code failed."""

    stopped_reason = "max_errors"

    def __init__(
        self,
        error_count: int,
        threshold: int,
        last_error: str | None = None,
        partial_answer: str | None = None,
        message: str | None = None,
    ) -> None:
        self.error_count, self.threshold, self.last_error = error_count, threshold, last_error
        text = message or f"Error threshold exceeded: {error_count} consecutive errors (limit: {threshold})"
        super().__init__(text, partial_answer)


class CancellationError(LimitExceededError):
    """The completion was cancelled: Ctrl-C (KeyboardInterrupt) in the caller, or ``RLM.cancel(run_id)``."""

    stopped_reason = "cancelled"

    def __init__(self, partial_answer: str | None = None, message: str | None = None) -> None:
        super().__init__(message or "Execution cancelled by user", partial_answer)


class ReplayError(InputError):
    """A trajectory file that cannot be replayed: damaged, from another format version, or its context."""


def log_to_file(path: str | Path, level: int = logging.INFO) -> Path:
    """Append the ``rlm_local`` logger's records (tracebacks included) to ``path``; returns the path."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    if any(isinstance(h, logging.FileHandler) and h.baseFilename == str(path.resolve()) for h in logger.handlers):
        return path  # already logging there (main() called twice in one process)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(min(logger.level or level, level))
    return path
