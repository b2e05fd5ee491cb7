"""Parent side of a sandbox session: starts the worker, runs cells, serves sub-calls, enforces limits.

The worker is untrusted: everything it sends is validated here, caps on sub-calls are counted here
(calls.py), and wall-clock time is enforced from here with SIGKILL. Guarantees of ``run``:
- It returns a ``CellResult`` whatever the worker does; ``SandboxError`` only when the sandbox is closed
  or for a fault of our own. A cell stopped at a limit, and any message that is malformed, over its cap
  or out of turn, ends that cell with an error and the session restored from the snapshot the worker
  forked before it (``Worker.recover``: a random token, so nothing the cell wrote can pass for the
  snapshot's answer and no later cell is ever out of step); a restart, with every variable lost, only
  when no snapshot answers.
- Something arriving between cells (a worker that died idle, a flood) is dealt with the same way before
  the next cell starts, within ``RESTORE_WAIT_SECONDS`` and ``launch.RECOVER_BYTES``.
- After every cell, every process of the session but the live worker and its snapshot is killed, and
  where a cgroup counts the session's CPU time, a session past ``Limits.session_cpu_seconds`` is ended.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..errors import input_errors
from .calls import CallServer, Spent, split_tools  # noqa: F401  (split_tools: its old home)
from .launch import WORKER_PATH, Worker
from .limits import CellResult, Limits, SandboxError
from .worker import protocol

if TYPE_CHECKING:
    from .pool import SandboxPool

RESTORE_WAIT_SECONDS = 15.0  # how long a paused snapshot may take to answer after its worker died
RESULT_FIELDS = ("stdout", "error", "final", "value")


def _check_context(context: object) -> None:
    if not (
        context is None
        or isinstance(context, str)
        or (isinstance(context, (list, tuple)) and all(isinstance(c, str) for c in context))
        or (isinstance(context, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()))
    ):
        raise TypeError("context must be a str, a list of str or a dict of str to str")


class Sandbox:
    """A persistent, isolated Python REPL session for model-written code. One thread at a time."""

    @input_errors
    def __init__(
        self,
        context: str | list[str] | tuple[str, ...] | dict[str, str] | None = None,
        llm_handler: Callable[[list[str]], Iterable[str]] | None = None,
        rlm_handler: Callable[[str, Any], str] | None = None,
        limits: Limits | None = None,
        *,
        rlm_batch_handler: Callable[[list[str], list[Any]], Iterable[str]] | None = None,
        tools: dict[str, Any] | None = None,
        prelude: str | None = None,
        pool: SandboxPool | None = None,
        _grant_real_os: bool = False,
    ) -> None:
        """``llm_handler(prompts) -> answers``; ``rlm_handler(prompt, context) -> answer`` per child run,
        or ``rlm_batch_handler(prompts, contexts) -> answers`` for ``rlm_query_batched`` as one batch.
        ``tools``: names the cells can use; a callable becomes a function whose JSON arguments are sent
        to the parent, which calls it and returns its JSON result; any other value (JSON data) is a
        read-only variable (lists become tuples, dicts read-only mappings). ``prelude``: source that the
        worker runs once at session start (and again after a restart) as model-level code, under the same
        policy and guards as a cell; its top-level names become REPL names (restored after every cell,
        hidden from SHOW_VARS). A prelude that fails to compile or raises makes this raise SandboxError.
        ``pool``: a SandboxPool whose pre-started workers this session takes (never one that ran cells)."""
        # _grant_real_os: tests only. Hands the cells the real os, sys and ctypes, as after a full escape of
        # the language layer, to show what the OS layer alone still holds (tests/sandbox/test_post_escape.py).
        self._grant_real_os = _grant_real_os
        self.limits = limits or Limits()
        _check_context(context)
        self._context = context  # a reference, kept for restarts; encoded only when a worker starts
        tool_funcs, self._tool_data = split_tools(tools or {})
        self._calls = CallServer(self.limits, llm_handler, rlm_handler, rlm_batch_handler, tool_funcs)
        if prelude is not None and not isinstance(prelude, str):
            raise TypeError("prelude must be a str of Python source")
        self._prelude = prelude
        self._pool = pool
        self._added: list[tuple[str, Any, bool]] = []  # contexts added later, re-sent to a restarted worker
        self._lock = threading.Lock()
        self._closed = False
        self._completed = 0  # cells whose results we accepted from the current worker
        self._worker: Worker | None = None
        self._finalizer: weakref.finalize[[], Sandbox] | None = None
        self._cpu_past = 0.0  # CPU seconds of this session's earlier workers (where a cgroup counts them)
        self._exhausted: str | None = None  # set once the session is past its CPU budget: no more cells
        self.start_seconds = 0.0
        self._start()

    # lifecycle -----------------------------------------------------------------------------------------
    def _start(self) -> None:
        t0 = time.monotonic()
        worker = (self._pool.take() if self._pool is not None else None) or Worker.spawn()
        self._finalizer = weakref.finalize(self, worker.kill)
        worker.init(
            self._context,
            self.limits,
            os.path.dirname(os.path.dirname(WORKER_PATH)),
            tools=(sorted(self._calls.tools), self._tool_data),
            grant_real_os=self._grant_real_os,
            prelude=self._prelude,
        )
        self._worker = worker
        self._completed = 0
        for name, value, as_context in self._added:
            self._send_context(name, value, as_context)
        self.start_seconds = time.monotonic() - t0

    def add_context(self, value: Any, name: str | None = None, *, as_context: bool = False) -> str:
        """Adds a context to the live session as a REPL variable (default name: the next ``context_N``;
        a name such as ``history`` works too, and ``context`` or a name added before is bound anew) and
        returns its name. Like ``context``, it is restored before every cell, and it survives a restart
        of the worker. Values: str, list or dict of JSON data. ``as_context``: ``context`` names the same
        value too (sent once), as for the newest document of a persistent session."""
        if name is not None and (not isinstance(name, str) or not name.isidentifier() or name.startswith("_")):
            raise ValueError(f"not a usable variable name: {name!r}")
        json.dumps(value)  # JSON data only; raises TypeError on anything else
        with self._lock:
            if self._closed:
                raise SandboxError("sandbox is closed")
            self._settle_idle()
            if self._worker is None:
                self._start()
            name = self._send_context(name, value, as_context)
            renamed = {name, "context"} if as_context else {name}
            self._added = [(n, v, a) for n, v, a in self._added if n not in renamed] + [(name, value, as_context)]
            return name

    def _send_context(self, name: str | None, value: Any, as_context: bool = False) -> str:
        kind, part = ("str", value) if isinstance(value, str) else ("json", json.dumps(value, ensure_ascii=False))
        w = self._worker
        assert w is not None  # called right after _start
        try:
            w.send({"op": "add", "name": name, "kind": kind, "as_context": as_context}, [part])
            msg, parts = w.read(time.monotonic() + self.limits.start_seconds)
        except (protocol.ChannelClosed, protocol.ChannelTimeout, protocol.Malformed, OSError) as e:
            self._discard_worker()
            raise SandboxError(f"could not add the context: {type(e).__name__}: {e}") from None
        if msg.get("type") != "added" or len(parts) != 1 or not w.note_pids(msg):
            self._discard_worker()
            raise SandboxError("could not add the context: the sandbox worker answered out of turn")
        w.answered()
        if msg.get("error"):
            raise ValueError(parts[0])
        return parts[0]

    def _discard_worker(self) -> None:
        if self._worker is not None:
            self._cpu_past += self._worker.session_cpu_seconds() or 0.0
        if self._finalizer is not None:
            self._finalizer()  # kills the worker once
            self._finalizer = None
        self._worker = None

    def _settle_idle(self) -> None:
        """Anything that arrived since the last cell (a snapshot that took over from a worker that died
        idle, or worse) is recovered from before the next exchange; a worker that cannot be is dropped."""
        w = self._worker
        if w is None or not w.reader.pending():
            return
        msg = w.recover(time.monotonic() + RESTORE_WAIT_SECONDS)
        if msg is None or msg["completed"] != self._completed:
            self._discard_worker()

    @property
    def llm_handler(self) -> Callable[[list[str]], Iterable[str]] | None:
        return self._calls.llm_handler

    @llm_handler.setter
    def llm_handler(self, handler: Callable[[list[str]], Iterable[str]] | None) -> None:
        self._calls.llm_handler = handler

    @property
    def rlm_handler(self) -> Callable[[str, Any], str] | None:
        return self._calls.rlm_handler

    @rlm_handler.setter
    def rlm_handler(self, handler: Callable[[str, Any], str] | None) -> None:
        self._calls.rlm_handler = handler

    @property
    def hardening(self) -> list[str]:
        """OS hardening steps that took effect in the worker (see hardening.py)."""
        return list(self._worker.hardening) if self._worker else []

    @property
    def pid(self) -> int | None:
        return self._worker.live_pid if self._worker else None

    def close(self) -> None:
        self._closed = True
        self._discard_worker()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # running cells --------------------------------------------------------------------------------------
    def run(self, code: str, *, wall_seconds: float | None = None, deadline: float | None = None) -> CellResult:
        """Runs one cell. ``wall_seconds`` lowers this cell's wall-clock (and CPU) limit below
        ``limits.wall_seconds``; ``deadline`` (a ``time.monotonic()`` value) is a hard end that counts
        time spent waiting on sub-calls too, e.g. the end of a run's time budget. A cell stopped at either
        is rolled back like any other."""
        if not isinstance(code, str):
            raise TypeError("code must be a str")
        return self._op({"code": code}, wall_seconds, deadline)

    def read_variable(
        self, name: str, *, wall_seconds: float | None = None, deadline: float | None = None
    ) -> CellResult:
        """Reads REPL variable ``name`` without running a code cell: ``result.value`` is the value as plain
        data (str, int, float, bool, None, lists and dicts of them; other objects as their ``str()``),
        ``result.error`` says when there is no such variable. Runs under the same limits as a cell."""
        if not isinstance(name, str):
            raise TypeError("name must be a str")
        return self._op({"read": name}, wall_seconds, deadline)

    def _op(self, op: dict[str, Any], wall_seconds: float | None, deadline: float | None = None) -> CellResult:
        with self._lock:
            if self._closed:
                raise SandboxError("sandbox is closed")
            note = None
            if self._exhausted is not None:
                return CellResult(stdout="", error=self._exhausted)
            try:
                self._settle_idle()
                if self._worker is None:
                    self._start()
                    note = "note: the sandbox was restarted earlier; variables from before were lost"
                result = self._run(op, wall_seconds, deadline)
            except SandboxError:
                self._discard_worker()
                raise
            except Exception as e:  # a bug of ours, never the worker's doing: one documented type out
                self._discard_worker()
                raise SandboxError(f"sandbox failure: {type(e).__name__}: {e}") from e
            except BaseException:
                # e.g. KeyboardInterrupt inside a handler: the worker is mid-conversation, start afresh
                self._discard_worker()
                raise
            if note:
                result.stdout = f"[{note}]\n{result.stdout}"
            return result

    def _run(self, op: dict[str, Any], wall_seconds: float | None, hard_deadline: float | None) -> CellResult:
        L, w = self.limits, self._worker
        assert w is not None  # _op starts a worker first
        wall = L.wall_seconds if wall_seconds is None else max(0.01, min(L.wall_seconds, wall_seconds))
        t0 = time.monotonic()
        if hard_deadline is not None:
            wall = max(0.01, min(wall, hard_deadline - t0))
        spent: Spent = {"sub": 0.0, "calls": 0}
        text = op.get("code", op.get("read", ""))
        cell_id = secrets.token_hex(8)  # every message of this cell must carry it: nothing written earlier can
        try:
            w.send(
                {"op": "run", "id": cell_id, "read": "read" in op, "cpu_seconds": float(min(L.cpu_seconds, wall))},
                [text],
            )
        except (protocol.ChannelClosed, protocol.ChannelTimeout, OSError):
            return self._stop(t0, spent, "RuntimeError: the sandbox worker stopped responding")
        while True:
            deadline = t0 + spent["sub"] + wall
            if hard_deadline is not None and hard_deadline < deadline:
                deadline = hard_deadline
            try:
                msg, parts = w.read(deadline)
            except protocol.ChannelTimeout:
                why = (
                    "the time budget ran out during this cell"
                    if deadline == hard_deadline
                    else f"the cell ran longer than the wall-clock limit of {wall:g} s"
                )
                return self._stop(t0, spent, f"TimeoutError: {why} and it was stopped")
            except protocol.MessageTooLarge as e:
                return self._stop(t0, spent, f"OverflowError: the cell sent more than the sandbox accepts ({e})")
            except protocol.Malformed:
                return self._stop(t0, spent, "RuntimeError: the sandbox worker sent a malformed message")
            except protocol.ChannelClosed:
                return self._restart(t0, spent, "the sandbox worker crashed", timed_out=False)
            kind = msg.get("type")
            if kind in ("result", "call", "abandon") and msg.get("id") != cell_id:  # written for another cell
                return self._stop(t0, spent, "RuntimeError: the sandbox worker sent a message out of turn")
            if kind == "result":
                result = self._result(msg, parts, t0, spent)
                if result is None:
                    return self._stop(t0, spent, "RuntimeError: the sandbox worker sent a malformed result")
                return self._after_cell(result)
            if kind == "call":
                s0 = time.monotonic()
                reply, results = self._calls.serve(msg, parts, spent)
                spent["sub"] += time.monotonic() - s0
                try:
                    w.send(reply, results)
                except (protocol.ChannelClosed, protocol.ChannelTimeout, OSError):
                    return self._stop(t0, spent, "RuntimeError: the sandbox worker stopped responding")
            elif kind == "abandon":  # code kept running after its cell; the worker handed over to its snapshot
                reason = parts[0][:500] if parts else "the cell could not be settled"
                return self._stop(t0, spent, f"RuntimeError: {reason}")
            elif kind == "restored":  # a snapshot took over: the worker died on its own (CPU rlimit, crash)
                return self._stop(
                    t0,
                    spent,
                    f"TimeoutError: the cell used more than its CPU time limit of {min(L.cpu_seconds, wall):g} s "
                    "(or crashed)",
                )
            else:
                return self._stop(t0, spent, "RuntimeError: the sandbox worker sent a message out of turn")

    def _stop(self, t0: float, spent: Spent, reason: str) -> CellResult:
        """Ends the cell: the live worker is killed and its snapshot takes over (``Worker.recover``); the
        snapshot says which state it holds. A restart when none answers or its answer does not fit."""
        w = self._worker
        assert w is not None  # called from _run
        msg = w.recover(time.monotonic() + RESTORE_WAIT_SECONDS)
        if self._over_cpu_budget():  # (a cell stopped at its CPU limit may be what used the session's up)
            assert self._exhausted is not None
            return self._stopped(t0, spent, f"{reason}. {self._exhausted}")
        if msg is not None and msg["completed"] == self._completed + 1:  # it finished just before the stop
            self._completed += 1
            return self._stopped(t0, spent, reason + "; it had just finished: its changes were kept, its output lost")
        if msg is None or msg["completed"] != self._completed:
            return self._restart(t0, spent, reason, timed_out=True)
        tail = "; the session is back in the state it had before this cell (its output and changes are lost)"
        return self._stopped(t0, spent, reason + tail, restored=True)

    def _stopped(self, t0: float, spent: Spent, error: str, restored: bool = False) -> CellResult:
        return CellResult(
            stdout="",
            error=error,
            final=None,
            timed_out=True,
            restored=restored,
            seconds=time.monotonic() - t0 - spent["sub"],
            subcall_seconds=spent["sub"],
            calls=spent["calls"],
        )

    def _restart(self, t0: float, spent: Spent, reason: str, timed_out: bool) -> CellResult:
        self._discard_worker()
        if self._closed:  # close() from another thread while this cell ran
            error = f"{reason}: the sandbox was closed"
        else:
            error = (
                f"{reason}. The sandbox was restarted: all variables you defined were lost "
                "(the context variables are loaded again)."
            )
            try:
                self._start()
            except SandboxError as e:
                error += f" Restart failed: {e}"
        result = self._stopped(t0, spent, error)
        result.timed_out = timed_out
        return result

    def _after_cell(self, result: CellResult) -> CellResult:
        """Every process of the session but the worker and its snapshot is killed, then the worker forks
        its next snapshot (Worker.answered)."""
        w = self._worker
        assert w is not None  # called from _run
        w.answered()
        if self._over_cpu_budget():
            assert self._exhausted is not None
            result.error = (result.error + "\n" if result.error else "") + self._exhausted
        return result

    def _over_cpu_budget(self) -> bool:
        """True once every process this session ever ran has used more CPU than session_cpu_seconds
        (where a cgroup counts it): the worker is killed and no further cell runs."""
        if self._exhausted is None:
            now = self._worker.session_cpu_seconds() if self._worker is not None else None
            used = self._cpu_past + (now or 0.0)
            if now is None and not self._cpu_past or used <= self.limits.session_cpu_seconds:
                return False
            self._discard_worker()
            self._exhausted = (
                f"ResourceWarning: this sandbox session used {used:.1f} s of CPU, over its limit of "
                f"{self.limits.session_cpu_seconds:g} s: it was stopped, and no further cell runs"
            )
        return True

    def _result(self, msg: dict[str, Any], parts: list[str], t0: float, spent: Spent) -> CellResult | None:
        """A result as the worker sent it, capped again here (the worker is never trusted); None when it
        is malformed."""
        present = msg.get("present")
        if (
            len(parts) != len(RESULT_FIELDS)
            or type(present) is not list
            or len(present) != len(RESULT_FIELDS)
            or not all(type(p) is bool for p in present)
            or not self._worker
            or msg.get("pid") != self._worker.live_pid  # only a restore changes the live worker
            or not self._worker.note_pids(msg)
        ):
            return None
        self._completed += 1
        L = self.limits
        got = {k: (parts[i] if present[i] else None) for i, k in enumerate(RESULT_FIELDS)}
        stdout = got["stdout"] or ""
        if len(stdout) > L.output_chars + 200:
            stdout = (
                stdout[: L.output_chars] + f"\n... [output truncated: {len(stdout) - L.output_chars} more characters]\n"
            )
        error, final = got["error"], got["final"]
        value = None
        if got["value"] is not None:
            try:
                value = json.loads(got["value"])
            except (ValueError, RecursionError):
                error = "ValueError: the variable could not be read"
        return CellResult(
            stdout=stdout,
            error=error[: L.max_error_chars] if error else None,
            final=final[: L.max_final_chars + 200] if final is not None else None,
            seconds=time.monotonic() - t0 - spent["sub"],
            subcall_seconds=spent["sub"],
            calls=spent["calls"],
            value=value,
        )
