"""Sandboxed Python REPL sessions for model-written code (RestrictedPython inside an isolated worker).

    with Sandbox(context=text, llm_handler=fn, limits=Limits(wall_seconds=30)) as sb:
        r = sb.run("print(len(context))")   # -> CellResult(stdout, error, final, timed_out, restored, ...)

This package is the parent side (sandbox.py, calls.py, launch.py, limits.py, cgroup.py, pool.py). The worker side, the
untrusted process, is the folder ``worker/``; the parent imports nothing from it but the wire format
(``worker/protocol.py``).
"""

from .calls import split_tools
from .limits import CellResult, Limits, SandboxError
from .pool import SandboxPool
from .sandbox import Sandbox

__all__ = ["CellResult", "Limits", "Sandbox", "SandboxError", "SandboxPool", "split_tools"]
