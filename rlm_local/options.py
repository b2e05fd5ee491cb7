"""The reference library's constructor arguments (PyPI ``rlms`` 0.1.3) and how ``RLM`` takes each one.

``REFERENCE_ARGUMENTS`` is the parity table: README's table is ``parity_table()`` (tests/test_options.py
checks they match, and that ``RLM`` accepts every argument). The checks below turn the reference's values
into ours, or refuse them with one clear error naming what to use instead: rlm-local runs models on your
own machines and code in its own sandbox, so hosted-API backends, remote code environments and dollar
budgets cannot apply.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .engines import SamplingParams
from .errors import (
    CancellationError,
    ErrorThresholdExceededError,
    LimitExceededError,
    RLMError,
    TimeoutExceededError,
    TokenLimitExceededError,
)
from .runlog.events import Event
from .runlog.rlm_logger import IterationLogger, is_iteration_logger
from .sandbox import split_tools as sandbox_split_tools

REFERENCE = "rlms 0.1.3"
# The reference's other execution environments: rlm-local runs code only in its own sandbox.
REFERENCE_ENVIRONMENTS = ("ipython", "docker", "modal", "prime", "daytona", "e2b")
# The reference's clients of hosted APIs: nothing leaves the machine here.
HOSTED_BACKENDS = ("anthropic", "gemini", "azure_openai", "portkey", "openrouter", "vercel")


@dataclass(frozen=True)
class Argument:
    name: str
    reference_default: str
    status: str  # "same": same meaning; "differs": taken, with a documented difference; "refused": clear error
    note: str


REFERENCE_ARGUMENTS = (
    Argument(
        "backend",
        "'openai'",
        "differs",
        "our default is llama.cpp in process; `'vllm'` with a `base_url` is a client of that server (our openai engine); hosted APIs (`'anthropic'`, `'gemini'`, ...) are refused",
    ),
    Argument("backend_kwargs", "None", "same", "`model_name`, `base_url`, `api_key` and each engine's own options"),
    Argument(
        "environment",
        "'local'",
        "differs",
        "`'local'` is our isolated sandbox (not `exec` in your process); `'docker'`, `'ipython'`, `'modal'`, `'prime'`, `'daytona'`, `'e2b'` are refused",
    ),
    Argument(
        "environment_kwargs",
        "None",
        "refused",
        "non-empty is refused: set sandbox limits with `sandbox_limits=Limits(...)`",
    ),
    Argument("depth", "0", "same", "an RLM created at `depth >= max_depth` is a plain model call"),
    Argument("max_depth", "1", "same", "1 = plain sub-calls; 2+ lets `rlm_query` start child RLMs"),
    Argument("max_iterations", "30", "same", "root turns of each run"),
    Argument("max_budget", "None", "refused", "a cost in dollars, which local models do not have: use `max_tokens`"),
    Argument("max_timeout", "None", "same", "raises `TimeoutExceededError` with the best partial answer; tree-wide"),
    Argument("max_tokens", "None", "same", "raises `TokenLimitExceededError`; children included"),
    Argument("max_errors", "None", "same", "consecutive turns whose code failed; raises `ErrorThresholdExceededError`"),
    Argument(
        "custom_system_prompt",
        "None",
        "same",
        "replaces the system prompt; a `{custom_tools_section}` slot gets the tools list",
    ),
    Argument("other_backends", "None", "same", "the sub-call engine (one entry, as in the reference)"),
    Argument("other_backend_kwargs", "None", "same", "its kwargs"),
    Argument(
        "logger",
        "None",
        "same",
        "`RLMLogger()` in memory (`result.metadata`), `RLMLogger(log_dir=...)` also JSONL; a `logging.Logger` gets every event",
    ),
    Argument("verbose", "False", "same", "progress on stderr"),
    Argument(
        "persistent",
        "False",
        "same",
        "one REPL across completions: `context_0..N`, `history_0..N`, `context` the first",
    ),
    Argument(
        "custom_tools",
        "None",
        "same",
        "functions (run in your process, JSON arguments), data (read-only), or `{'tool': ..., 'description': ...}`",
    ),
    Argument("custom_sub_tools", "None", "same", "the tools of child RLMs (`None`: `custom_tools`; `{}`: none)"),
    Argument(
        "compaction",
        "False",
        "same",
        "summarise the root conversation near its window; the full history in `history` (the root is told when it compacts)",
    ),
    Argument(
        "compaction_threshold_pct",
        "0.85",
        "same",
        "share of the root's prompt budget (its window less the reply's room)",
    ),
    Argument(
        "max_concurrent_subcalls", "4", "same", "child RLMs of one `rlm_query_batched` at once; sub-calls still batch"
    ),
    Argument("on_subcall_start", "None", "same", "`(depth, model, prompt_preview)` when a child RLM starts"),
    Argument("on_subcall_complete", "None", "same", "`(depth, model, seconds, error_or_None)` when it ends"),
    Argument(
        "on_iteration_start",
        "None",
        "differs",
        "`(depth, iteration)` before each root turn; the reference takes it but never calls it",
    ),
    Argument(
        "on_iteration_complete",
        "None",
        "differs",
        "`(depth, iteration, seconds)` after each root turn; the reference never calls it",
    ),
    Argument("sampling_args", "None", "same", "root turns: `temperature`, `top_p`, `max_tokens`, `seed`, `stop`"),
    Argument("sub_sampling_args", "None", "same", "sub-calls: the same keys"),
    Argument(
        "orchestrator",
        "True",
        "differs",
        "off unless `True`: our prompts are tuned for small local models; `True` adds planning advice",
    ),
    Argument("user_prologue", "None", "same", "your text after the context's description, before the first turn"),
)


def parity_table() -> str:
    """README's parity table, from ``REFERENCE_ARGUMENTS`` and ``RLM``'s own defaults."""
    from .rlm import RLM

    ours = inspect.signature(RLM).parameters
    rows = [
        "| argument | reference default | rlm-local default | status | how rlm-local takes it |",
        "|---|---|---|---|---|",
    ]
    for arg in REFERENCE_ARGUMENTS:
        default = ours[arg.name].default
        rows.append(f"| `{arg.name}` | `{arg.reference_default}` | `{default!r}` | {arg.status} | {arg.note} |")
    return "\n".join(rows)


def check_environment(environment: str, environment_kwargs: dict[str, Any] | None, persistent: bool) -> None:
    if environment in REFERENCE_ENVIRONMENTS:
        what = "persistent=True is not supported" if persistent else f"environment={environment!r} is not available"
        raise RLMError(
            f"{what} for environment {environment!r} in rlm-local: code runs in its own local sandbox (a "
            "separate, restricted process); use environment='local'"
        )
    if environment != "local":
        raise RLMError(f"unknown environment {environment!r}; rlm-local runs code in environment='local'")
    if environment_kwargs:
        raise RLMError(
            f"environment_kwargs are not used by rlm-local's sandbox (got {sorted(environment_kwargs)}); "
            "set limits with sandbox_limits=Limits(...)"
        )


def engine_args(backend: str, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The engine a reference backend name means here: ``vllm`` with a ``base_url`` is a client of that
    server (our openai engine); hosted APIs are refused."""
    if backend in HOSTED_BACKENDS:
        raise RLMError(
            f"backend {backend!r} is a hosted API, and rlm-local runs models on your own machines: use "
            "backend='llamacpp' (the default), 'transformers' or 'vllm', or backend='openai' with the "
            "base_url of an OpenAI-compatible server you run"
        )
    if backend == "vllm" and "base_url" in kwargs:
        return "openai", kwargs
    return backend, kwargs


def sampling(args: dict[str, Any] | None, what: str) -> dict[str, Any]:
    """``sampling_args``/``sub_sampling_args`` checked against what every engine takes."""
    if not args:
        return {}
    known = {f.name for f in dataclasses.fields(SamplingParams)}
    if unknown := set(args) - known:
        raise RLMError(f"{what}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    out = dict(args)
    if isinstance(out.get("stop"), (list, str)):
        out["stop"] = (out["stop"],) if isinstance(out["stop"], str) else tuple(out["stop"])
    return out


def split_tools(custom_tools: dict[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """The reference's ``{"tool": value, "description": text}`` entries unwrapped: (tools, descriptions)."""
    if custom_tools is None:
        return None, {}
    tools, notes = {}, {}
    for name, value in custom_tools.items():
        if isinstance(value, dict) and "tool" in value and set(value) <= {"tool", "description"}:
            tools[name] = value["tool"]
            if isinstance(value.get("description"), str):
                notes[name] = value["description"]
        else:
            tools[name] = value
    return tools, notes


def limit_error(stopped_reason: str, answer: str, context: dict[str, Any]) -> LimitExceededError | None:
    """The reference's exception for a run a budget ended (None for reasons it returns a result for:
    max_iterations gives the default answer in the reference too). ``context``: elapsed, timeout, tokens,
    max_tokens, errors, max_errors, last_error."""
    partial = answer or None
    c = context
    if stopped_reason == "max_timeout":
        return TimeoutExceededError(c["elapsed"], c["timeout"], partial)
    if stopped_reason == "max_tokens":
        return TokenLimitExceededError(c["tokens"], c["max_tokens"], partial)
    if stopped_reason == "max_errors":
        return ErrorThresholdExceededError(c["max_errors"], c["max_errors"], c.get("last_error"), partial)
    if stopped_reason == "cancelled":
        return CancellationError(partial, "Execution cancelled")
    return None


def check_numbers(args: dict[str, Any]) -> None:
    if args["max_iterations"] < 1 or args["max_depth"] < 1 or args["depth"] < 0:
        raise RLMError("max_iterations and max_depth must be at least 1, and depth at least 0")
    for name in ("max_timeout", "max_tokens", "output_limit", "max_errors", "max_concurrent_subcalls"):
        value = args[name]
        if value is not None and value <= 0:
            raise RLMError(f"{name} must be positive (or None for no limit), got {value!r}")
    if args["max_subcalls"] is not None and args["max_subcalls"] < 0:
        raise RLMError(f"max_subcalls must be >= 0, got {args['max_subcalls']!r}")
    if not 0 < args["compaction_threshold_pct"] <= 1:
        raise RLMError(f"compaction_threshold_pct must be in (0, 1], got {args['compaction_threshold_pct']!r}")


def check_tools(custom_tools: dict[str, Any] | None) -> dict[str, Any]:
    """The reference's ``custom_tools``: a callable becomes a REPL function run here in the caller's process
    (JSON arguments and result), anything else read-only JSON data (rules: ``sandbox.split_tools``);
    ``history`` and ``answer`` are the REPL's own."""
    if not custom_tools:
        return {}
    try:
        sandbox_split_tools(custom_tools)
    except (TypeError, ValueError) as exc:
        raise RLMError(f"custom_tools: {exc}") from None
    for taken in ("history", "answer"):
        if taken in custom_tools:
            raise RLMError(f"custom_tools: {taken!r} cannot be a tool name (the REPL defines it)")
    return dict(custom_tools)


def use_logger(logger: Any, listeners: list[Callable[[Event], None]]) -> IterationLogger | None:
    """The reference's ``logger=``: an RLMLogger (or anything with its methods) gets the reference's
    trajectory (returned: completion() feeds it and puts it in ``result.metadata``); a ``logging.Logger``
    gets every event as a JSON line."""
    if logger is None:
        return None
    if isinstance(logger, logging.Logger):
        listeners.append(lambda ev: logger.info("%s", json.dumps(ev.to_dict(2000), default=str)))
        return None
    if is_iteration_logger(logger):
        return logger
    raise RLMError(
        f"logger must be an RLMLogger (rlm_local.RLMLogger) or a logging.Logger, got {type(logger).__name__}"
    )
