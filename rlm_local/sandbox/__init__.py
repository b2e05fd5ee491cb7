"""Sandboxed Python REPL sessions for model-written code (RestrictedPython inside an isolated worker).

    with Sandbox(context=text, llm_handler=fn, limits=Limits(wall_seconds=30)) as sb:
        r = sb.run("print(len(context))")   # -> CellResult(stdout, error, final, timed_out, restored, ...)

Only session.py is imported here; the worker-side files (worker, guards, policy, hardening) run in the
worker process and are never imported by the parent.
"""
from .limits import CellResult, Limits, SandboxError
from .session import Sandbox, split_tools

__all__ = ["CellResult", "Limits", "Sandbox", "SandboxError", "split_tools"]
