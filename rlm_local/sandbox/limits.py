"""Records of the sandbox interface (limits, cell results, errors) and the parent's checks of sub-call
requests, which come from the untrusted worker."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..errors import SandboxError as SandboxError  # re-exported: its old home
from ..errors import input_errors
from .worker.protocol import check_call_size


@dataclass
class Limits:
    cpu_seconds: float = 60.0  # CPU time per cell (kernel rlimit, whole seconds, rounded up)
    wall_seconds: float = 120.0  # wall time per cell, not counting time spent in sub-calls
    memory_mb: int = 4096  # address space a session may add on top of its loaded context
    output_chars: int = 20_000  # stdout kept per cell; the rest is counted and dropped
    max_prompts_per_call: int = 256
    max_calls_per_cell: int = 2_000  # prompts sent to sub-models by one cell
    max_calls_per_session: int = 20_000
    max_prompt_chars: int = 2_000_000
    max_call_chars: int = 200_000_000  # all prompts of one call plus an rlm_query context
    max_call_items: int = 100_000  # prompts plus context items of one call, empty ones included
    max_final_chars: int = 2_000_000  # FINAL values and variables read by read_variable
    max_error_chars: int = 20_000  # error text of one cell
    max_processes: int = 16  # processes of one session (worker, snapshot, anything it forks)
    start_seconds: float = 60.0  # worker start, including loading the context
    session_cpu_seconds: float = 3600.0  # CPU of the whole session: every process's hard rlimit, and all
    # of them together where a cgroup counts it (checked after each cell)
    cpu_cores: float = 2.0  # cgroup cpu controller: the session's processes together use at most this (a
    # cell's core plus its snapshot's fork and exit, which run beside the next cell)

    @input_errors
    def __post_init__(self) -> None:
        """Every limit is a positive number (a whole one where the field is an int)."""
        for f in fields(self):
            value = getattr(self, f.name)
            whole = f.type in (int, "int")
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
                raise TypeError(f"Limits.{f.name} must be {'an int' if whole else 'a number'}, got {value!r}")
            if not value > 0:
                raise ValueError(f"Limits.{f.name} must be > 0, got {value!r}")


@dataclass
class CellResult:
    stdout: str
    error: str | None = None
    final: str | None = None
    timed_out: bool = False
    restored: bool = False
    seconds: float = 0.0  # wall time of the cell without sub-calls
    subcall_seconds: float = 0.0  # time spent in llm_handler / rlm_handler
    calls: int = 0  # prompts sent to sub-models by this cell
    value: object = None  # Sandbox.read_variable: the variable as plain data (None if missing)


def check_call_header(header: dict[str, Any], L: Limits) -> None:
    """Refuses a sub-call by its header alone, before its payload is read (raises ValueError)."""
    sizes = header.get("parts", [])
    if len(sizes) > L.max_prompts_per_call + 2 * L.max_call_items:
        raise ValueError(f"sub-call with too many items: {len(sizes)} parts (limit {L.max_call_items} items)")
    if sum(sizes) > 4 * L.max_call_chars + 16 * L.max_call_items:
        raise ValueError(f"sub-call too large: {sum(sizes)} bytes (limit {L.max_call_chars} characters)")


def validate_call(kind: object, prompts: list[str], contexts: list[Any] | None, L: Limits) -> None:
    """Checks a decoded sub-call request from the (untrusted) worker against the limits; the worker runs
    the same size checks first (``protocol.check_call_size``), so its code sees the same messages."""
    if kind not in ("llm", "rlm"):
        raise ValueError("unknown sub-call")
    if not prompts:
        raise ValueError("sub-call prompts must be a non-empty list of str")
    if (kind == "llm") != (contexts is None) or (contexts is not None and len(contexts) != len(prompts)):
        raise ValueError("llm_query takes no context; rlm_query takes one (or None) per prompt")
    check_call_size(prompts, contexts, L.max_prompts_per_call, L.max_prompt_chars, L.max_call_chars, L.max_call_items)
