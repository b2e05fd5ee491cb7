"""The records a completion returns and the reference library's trajectory records, under its names.

``RLMResult`` (also ``RLMChatCompletion``, the reference's name) is what ``RLM.completion()`` returns. The
other records are the shape of ``RLMLogger``'s trajectory (``result.metadata``), as the reference builds
it: ``{"run_metadata": RLMMetadata.to_dict(), "iterations": [RLMIteration.to_dict() + type, number, time]}``,
so analysis code written for the reference reads ours. Two differences, both deliberate: an iteration's
``prompt`` is ``{"prompt_tokens": N}`` (the reference stored the whole conversation, context included, in
every iteration), and a code block's ``locals`` are empty (variables stay in the sandbox process).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from .usage import ModelUsageSummary, UsageSummary

__all__ = [
    "CodeBlock",
    "ModelUsageSummary",
    "QueryMetadata",
    "REPLResult",
    "RLMChatCompletion",
    "RLMIteration",
    "RLMMetadata",
    "RLMResult",
    "UsageSummary",
]

SECRET_WORDS = ("key", "token", "secret", "password")


def _serialize_value(value: Any) -> Any:
    """A JSON-safe form of a setting (backend_kwargs hold functions, paths, engines)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, ModuleType):
        return f"<module '{value.__name__}'>"
    if isinstance(value, (list, tuple)):
        return [_serialize_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _serialize_value(v) for k, v in value.items()}
    if callable(value):
        return f"<{type(value).__name__} '{getattr(value, '__name__', repr(value))}'>"
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__}>"


def public_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``backend_kwargs`` fit for a log: secrets masked, values JSON-safe."""
    return {k: ("***" if any(w in k.lower() for w in SECRET_WORDS) else _serialize_value(v)) for k, v in kwargs.items()}


@dataclass
class RLMResult:
    """What ``completion()`` returns: the reference's ``RLMChatCompletion`` fields (``root_model``,
    ``prompt``, ``response``, ``usage_summary``, ``execution_time``, ``metadata``: the RLMLogger trajectory
    or None, ``error``) plus the run's story: ``stopped_reason``, ``iterations``, ``run_id``, ``trajectory``
    (our events) and, for ``response_format``, ``parsed`` (the validated object) and ``invalid_answer``."""

    response: str
    usage_summary: UsageSummary = field(default_factory=UsageSummary)
    execution_time: float = 0.0
    trajectory: list[dict[str, Any]] = field(default_factory=list)
    stopped_reason: str = "final"
    iterations: int = 0
    run_id: str = ""
    root_model: str = ""
    metadata: dict[str, Any] | None = None
    prompt: Any = None
    error: str | None = None
    parsed: Any = None
    invalid_answer: str | None = None
    # Where the answer came from: "final" (the model gave it), "closing" (its reply when a budget ran out),
    # "recovered" (the best candidate its cells printed or stored) or "none"; False in answer_grounded: the
    # model wrote the answer out and the run never observed it (see loop/levers.py).
    answer_source: str = "final"
    answer_grounded: bool | None = None

    def __str__(self) -> str:
        return self.response

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the reference's keys and ours; the trajectory is left out (it has its own file), the
        prompt (the context) too unless it is short text."""
        out: dict[str, Any] = {
            "root_model": self.root_model,
            "response": self.response,
            "usage_summary": self.usage_summary.to_dict(),
            "execution_time": round(self.execution_time, 3),
            "stopped_reason": self.stopped_reason,
            "iterations": self.iterations,
            "run_id": self.run_id,
            "answer_source": self.answer_source,
            "answer_grounded": self.answer_grounded,
        }
        if isinstance(self.prompt, str) and len(self.prompt) <= 2000:
            out["prompt"] = self.prompt
        if self.metadata is not None:
            out["metadata"] = self.metadata
        if self.error is not None:
            out["error"] = self.error
        if self.parsed is not None:
            out["parsed"] = _serialize_value(
                self.parsed.model_dump() if hasattr(self.parsed, "model_dump") else self.parsed
            )
        if self.invalid_answer is not None:
            out["invalid_answer"] = self.invalid_answer
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RLMResult:
        return cls(
            root_model=data.get("root_model") or "",
            prompt=data.get("prompt"),
            response=data.get("response") or "",
            usage_summary=UsageSummary.from_dict(data.get("usage_summary") or {}),
            execution_time=float(data.get("execution_time") or 0.0),
            metadata=data.get("metadata"),
            error=data.get("error"),
            stopped_reason=data.get("stopped_reason") or "final",
            iterations=int(data.get("iterations") or 0),
            run_id=data.get("run_id") or "",
            parsed=data.get("parsed"),
            invalid_answer=data.get("invalid_answer"),
        )


RLMChatCompletion = RLMResult  # the reference's name


class REPLResult:
    """One code block's outcome in the reference's trajectory shape (``stderr``: the cell's error text)."""

    def __init__(
        self,
        stdout: str,
        stderr: str,
        locals: dict[str, Any],
        execution_time: float | None = None,
        rlm_calls: list[RLMResult] | None = None,
        final_answer: str | None = None,
    ) -> None:
        self.stdout, self.stderr, self.locals = stdout, stderr, locals
        self.execution_time = execution_time
        self.rlm_calls = rlm_calls or []
        self.final_answer = final_answer

    def __str__(self) -> str:
        return (
            f"REPLResult(stdout={self.stdout}, stderr={self.stderr}, locals={self.locals}, "
            f"execution_time={self.execution_time}, rlm_calls={len(self.rlm_calls)})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "stdout": self.stdout,
            "stderr": self.stderr,
            "locals": {k: _serialize_value(v) for k, v in self.locals.items()},
            "execution_time": self.execution_time,
            "rlm_calls": [call.to_dict() for call in self.rlm_calls],
            "final_answer": self.final_answer,
        }


@dataclass
class CodeBlock:
    code: str
    result: REPLResult

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "result": self.result.to_dict()}


@dataclass
class RLMIteration:
    """One root turn: the reply, the code blocks it ran, and the final answer when it gave one."""

    prompt: Any
    response: str
    code_blocks: list[CodeBlock]
    final_answer: str | None = None
    iteration_time: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "response": self.response,
            "code_blocks": [block.to_dict() for block in self.code_blocks],
            "final_answer": self.final_answer,
            "iteration_time": self.iteration_time,
        }


@dataclass
class RLMMetadata:
    """The RLM's configuration at the head of a trajectory (secrets masked by the caller)."""

    root_model: str
    max_depth: int
    max_iterations: int
    backend: str
    backend_kwargs: dict[str, Any]
    environment_type: str
    environment_kwargs: dict[str, Any]
    other_backends: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "root_model": self.root_model,
            "max_depth": self.max_depth,
            "max_iterations": self.max_iterations,
            "backend": self.backend,
            "backend_kwargs": {k: _serialize_value(v) for k, v in self.backend_kwargs.items()},
            "environment_type": self.environment_type,
            "environment_kwargs": {k: _serialize_value(v) for k, v in self.environment_kwargs.items()},
            "other_backends": self.other_backends,
        }


class QueryMetadata:
    """The reference's description of a prompt: ``context_type`` ("str", "dict", "list"), each piece's
    length in characters and their total. rlm-local's richer form is loop.prompts.ContextInfo."""

    def __init__(self, prompt: str | list[Any] | dict[Any, Any]) -> None:
        if isinstance(prompt, str):
            self.context_type, pieces = "str", [prompt]
        elif isinstance(prompt, dict):
            self.context_type, pieces = "dict", list(prompt.values())
        elif isinstance(prompt, list):
            self.context_type = "list"
            pieces = [p.get("content", "") if isinstance(p, dict) else p for p in prompt] or [""]
        else:
            raise ValueError(f"Invalid prompt type: {type(prompt)}")
        self.context_lengths = [len(p) if isinstance(p, str) else len(repr(p)) for p in pieces]
        self.context_total_length = sum(self.context_lengths)
