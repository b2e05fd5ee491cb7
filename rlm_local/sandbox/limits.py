"""Records of the sandbox interface (limits, cell results, errors) and the parent's checks of sub-call
requests, which come from the untrusted worker."""
from __future__ import annotations

from dataclasses import dataclass


class SandboxError(RuntimeError):
    """The sandbox could not be started or was used after close()."""


@dataclass
class Limits:
    cpu_seconds: float = 60.0          # CPU time per cell (kernel rlimit, whole seconds, rounded up)
    wall_seconds: float = 120.0        # wall time per cell, not counting time spent in sub-calls
    memory_mb: int = 4096              # address space a session may add on top of its loaded context
    output_chars: int = 20_000         # stdout kept per cell; the rest is counted and dropped
    max_prompts_per_call: int = 256
    max_calls_per_cell: int = 2_000    # prompts sent to sub-models by one cell
    max_calls_per_session: int = 20_000
    max_prompt_chars: int = 2_000_000
    max_call_chars: int = 200_000_000  # all prompts of one call plus an rlm_query context
    start_seconds: float = 60.0        # worker start, including loading the context


@dataclass
class CellResult:
    stdout: str
    error: str | None = None
    final: str | None = None
    timed_out: bool = False
    restored: bool = False
    seconds: float = 0.0               # wall time of the cell without sub-calls
    subcall_seconds: float = 0.0       # time spent in llm_handler / rlm_handler
    calls: int = 0                     # prompts sent to sub-models by this cell
    value: object = None               # Sandbox.read_variable: the variable as plain data (None if missing)


def validate_call(msg: dict, L: Limits) -> tuple[str, list[str], object]:
    """Checks a sub-call request from the (untrusted) worker against the limits."""
    kind, prompts, context = msg.get("kind"), msg.get("prompts"), msg.get("context")
    if kind not in ("llm", "rlm"):
        raise ValueError("unknown sub-call")
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("sub-call prompts must be a non-empty list of str")
    if len(prompts) > L.max_prompts_per_call:
        raise ValueError(f"too many prompts in one call: {len(prompts)} (limit {L.max_prompts_per_call}); "
                         "split them into smaller batches")
    longest = max(map(len, prompts))
    if longest > L.max_prompt_chars:
        raise ValueError(f"prompt too long: {longest} characters (limit {L.max_prompt_chars}); "
                         "send a smaller chunk")
    size = sum(map(len, prompts))
    if kind == "rlm":
        if len(prompts) != 1:
            raise ValueError("rlm_query takes one prompt")
        if isinstance(context, str):
            size += len(context)
        elif isinstance(context, list) and all(isinstance(c, str) for c in context):
            size += sum(map(len, context))
        elif (isinstance(context, dict)
              and all(isinstance(k, str) and isinstance(v, str) for k, v in context.items())):
            size += sum(map(len, context.values()))
        elif context is not None:
            raise TypeError("rlm_query context must be a str, a list of str or a dict of str to str")
    if size > L.max_call_chars:
        raise ValueError(f"sub-call too large: {size} characters of prompt and context (limit {L.max_call_chars})")
    return kind, prompts, context if kind == "rlm" else None
