"""Parent side of a sandbox session: starts the worker, runs cells, serves sub-calls, enforces limits.

The worker is untrusted: everything it sends is validated here, caps on sub-calls are counted here, and
wall-clock time is enforced from here with SIGKILL (the worker's own snapshot then restores the session).
"""

from __future__ import annotations

import json
import keyword
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypedDict

from .launch import WORKER_PATH, Worker
from .limits import CellResult, Limits, SandboxError, validate_call
from .worker import protocol

RESTORE_WAIT_SECONDS = 15.0  # how long a paused snapshot may take to answer after its worker died
RESULT_FIELDS = ("stdout", "error", "final", "value")


class _Spent(TypedDict):
    """What one cell has spent on sub-calls so far: seconds and prompts sent."""

    sub: float
    calls: int


def split_tools(tools: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(functions, data) of a tools mapping, checked: names usable in the REPL and not its own, data that
    is JSON. Raises ValueError or TypeError with the reason."""
    if not isinstance(tools, dict):
        raise TypeError("tools must be a dict of name -> function or JSON data")
    funcs: dict[str, Any] = {}
    data: dict[str, Any] = {}
    for name, value in tools.items():
        if (
            not isinstance(name, str)
            or not name.isidentifier()
            or name.startswith("_")
            or keyword.iskeyword(name)
            or name in protocol.RESERVED_NAMES
        ):
            raise ValueError(
                f"{name!r} cannot be a tool name in the REPL (identifiers only, not starting with '_', "
                "not one of the REPL's own names)"
            )
        if callable(value):
            funcs[name] = value
        else:
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                raise TypeError(f"tool {name!r} is neither a function nor JSON data") from None
            data[name] = value
    return funcs, data


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
        _grant_real_os: bool = False,
    ) -> None:
        """``llm_handler(prompts) -> answers``; ``rlm_handler(prompt, context) -> answer`` per child run,
        or ``rlm_batch_handler(prompts, contexts) -> answers`` for ``rlm_query_batched`` as one batch.
        ``tools``: names the cells can use; a callable becomes a function whose JSON arguments are sent
        to the parent, which calls it and returns its JSON result; any other value (JSON data) is a
        read-only variable (lists become tuples, dicts read-only mappings). ``prelude``: source that the
        worker runs once at session start (and again after a restart) as model-level code, under the same
        policy and guards as a cell; its top-level names become REPL names (restored after every cell,
        hidden from SHOW_VARS). A prelude that fails to compile or raises makes this raise SandboxError."""
        # _grant_real_os: tests only. Hands the cells the real os, sys and ctypes, as after a full escape of
        # the language layer, to show what the OS layer alone still holds (tests/sandbox/test_post_escape.py).
        self._grant_real_os = _grant_real_os
        self.limits = limits or Limits()
        _check_context(context)
        self._context = context  # a reference, kept for restarts; encoded only when a worker starts
        self.llm_handler = llm_handler
        self.rlm_handler = rlm_handler
        self.rlm_batch_handler = rlm_batch_handler
        self._tools, self._tool_data = split_tools(tools or {})
        if prelude is not None and not isinstance(prelude, str):
            raise TypeError("prelude must be a str of Python source")
        self._prelude = prelude
        self._added: list[tuple[str, Any, bool]] = []  # contexts added later, re-sent to a restarted worker
        self._lock = threading.Lock()
        self._closed = False
        self._calls_session = 0
        self._completed = 0  # cells whose results we accepted from the current worker
        self._worker: Worker | None = None
        self._finalizer: weakref.finalize[[], Sandbox] | None = None
        self.start_seconds = 0.0
        self._start()

    # lifecycle -----------------------------------------------------------------------------------------
    def _start(self) -> None:
        t0 = time.monotonic()
        worker = Worker.start(
            self._context,
            self.limits,
            os.path.dirname(os.path.dirname(WORKER_PATH)),
            tools=(sorted(self._tools), self._tool_data),
            grant_real_os=self._grant_real_os,
            prelude=self._prelude,
        )
        self._finalizer = weakref.finalize(self, worker.kill)
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
        except (protocol.ChannelClosed, protocol.ChannelTimeout, protocol.MessageTooLarge, OSError) as e:
            self._discard_worker()
            raise SandboxError(f"could not add the context: {type(e).__name__}: {e}") from None
        if msg.get("type") != "added" or not parts:
            self._discard_worker()
            raise SandboxError("could not add the context: the sandbox worker answered out of turn")
        if msg.get("error"):
            raise ValueError(parts[0])
        return parts[0]

    def _discard_worker(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # kills the worker once
            self._finalizer = None
        self._worker = None

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
            if self._worker is None:
                self._start()
                note = "note: the sandbox was restarted earlier; variables from before were lost"
            try:
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
        spent: _Spent = {"sub": 0.0, "calls": 0}
        self._drain_idle_messages()
        text = op.get("code", op.get("read", ""))
        try:
            w.send({"op": "run", "read": "read" in op, "cpu_seconds": float(min(L.cpu_seconds, wall))}, [text])
        except (protocol.ChannelClosed, protocol.ChannelTimeout, OSError):
            return self._restart(t0, spent, "the sandbox worker stopped responding", timed_out=False)
        while True:
            deadline = t0 + spent["sub"] + wall
            if hard_deadline is not None and hard_deadline < deadline:
                deadline = hard_deadline
            try:
                msg, parts = w.read(deadline)
            except protocol.ChannelTimeout:
                w.kill_live()
                why = (
                    "the time budget ran out during this cell"
                    if deadline == hard_deadline
                    else f"the cell ran longer than the wall-clock limit of {wall:g} s"
                )
                return self._await_restore(t0, spent, f"TimeoutError: {why} and it was stopped")
            except protocol.MessageTooLarge as e:
                w.kill_live()
                return self._await_restore(
                    t0, spent, f"OverflowError: the cell sent more than the sandbox accepts ({e}) and was stopped"
                )
            except protocol.ChannelClosed:
                return self._restart(t0, spent, "the sandbox worker crashed", timed_out=False)
            kind = msg.get("type")
            if kind == "result":
                return self._result(msg, parts, t0, spent)
            if kind == "call":
                s0 = time.monotonic()
                reply, results = self._serve_call(msg, parts, spent)
                spent["sub"] += time.monotonic() - s0
                try:
                    w.send(reply, results)
                except (protocol.ChannelClosed, protocol.ChannelTimeout, OSError):
                    return self._restart(t0, spent, "the sandbox worker stopped responding", timed_out=False)
            elif kind == "abandon":  # code kept running after its cell; the worker handed over to its snapshot
                reason = parts[0][:500] if parts else "the cell could not be settled"
                return self._await_restore(t0, spent, f"RuntimeError: {reason}; the cell was stopped")
            elif kind == "restored":  # the worker died on its own (CPU rlimit or a crash); snapshot took over
                w.live_pid = pid if isinstance(pid := msg.get("pid"), int) else w.live_pid
                return self._stopped(
                    t0,
                    spent,
                    f"TimeoutError: the cell used more than its CPU time limit of "
                    f"{min(L.cpu_seconds, wall):g} s (or crashed) and was stopped",
                    restored=True,
                )
            else:
                w.kill()
                return self._restart(t0, spent, "the sandbox worker sent a malformed message", timed_out=False)

    def _drain_idle_messages(self) -> None:
        """A worker that died while idle was replaced by its snapshot, which said so; nothing was lost
        because the snapshot holds the state after the last cell."""
        w = self._worker
        assert w is not None  # called from _run
        while w.reader.pending():
            try:
                msg, _ = w.read(time.monotonic() + 1.0)
            except (protocol.ChannelTimeout, protocol.ChannelClosed, protocol.MessageTooLarge):
                return
            if msg.get("type") == "restored" and isinstance(msg.get("pid"), int):
                w.live_pid = msg["pid"]

    def _await_restore(self, t0: float, spent: _Spent, reason: str) -> CellResult:
        """After a kill, wait for the snapshot's 'restored'. If the cell's result slipped out just before
        the kill, the snapshot may hold the state after the cell: its 'completed' count says which."""
        w = self._worker
        assert w is not None  # called from _run
        late_result = None
        deadline = time.monotonic() + RESTORE_WAIT_SECONDS
        while True:
            try:
                msg, parts = w.read(deadline)
            except protocol.MessageTooLarge:
                continue  # the rest of a flood from the dead cell; the snapshot's greeting follows it
            except (protocol.ChannelTimeout, protocol.ChannelClosed):
                return self._restart(t0, spent, reason, timed_out=True)
            if msg.get("type") == "result" and late_result is None:
                late_result = (msg, parts)
            elif msg.get("type") == "restored" and isinstance(msg.get("pid"), int):
                w.live_pid = msg["pid"]
                if late_result is not None and msg.get("completed") == self._completed + 1:
                    return self._result(*late_result, t0, spent)
                return self._stopped(t0, spent, reason, restored=True)

    def _stopped(self, t0: float, spent: _Spent, reason: str, restored: bool) -> CellResult:
        tail = (
            "; the session is back in the state it had before this cell (its output and changes are lost)"
            if restored
            else ""
        )
        return CellResult(
            stdout="",
            error=reason + tail,
            final=None,
            timed_out=True,
            restored=restored,
            seconds=time.monotonic() - t0 - spent["sub"],
            subcall_seconds=spent["sub"],
            calls=spent["calls"],
        )

    def _restart(self, t0: float, spent: _Spent, reason: str, timed_out: bool) -> CellResult:
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
        return CellResult(
            stdout="",
            error=error,
            final=None,
            timed_out=timed_out,
            restored=False,
            seconds=time.monotonic() - t0 - spent["sub"],
            subcall_seconds=spent["sub"],
            calls=spent["calls"],
        )

    def _result(self, msg: dict[str, Any], parts: list[str], t0: float, spent: _Spent) -> CellResult:
        """A result as the worker sent it, capped again here: the worker is never trusted."""
        self._completed += 1
        L = self.limits
        present = p if isinstance(p := msg.get("present"), list) else []
        got = {
            k: (parts[i] if i < len(parts) and i < len(present) and present[i] is True else None)
            for i, k in enumerate(RESULT_FIELDS)
        }
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

    # sub-calls ------------------------------------------------------------------------------------------
    def _serve_call(self, msg: dict[str, Any], parts: list[str], spent: _Spent) -> tuple[dict[str, Any], list[str]]:
        try:
            results = self._call_handler(msg, parts, spent)
        except Exception as e:  # message only: the model must never see a host traceback
            text = str(e)
            return {"op": "reply", "ok": False}, [(f"{type(e).__name__}: {text}" if text else type(e).__name__)[:2000]]
        return {"op": "reply", "ok": True}, results

    def _call_handler(self, msg: dict[str, Any], parts: list[str], spent: _Spent) -> list[str]:
        L = self.limits
        prompts, contexts = protocol.split_call(msg, parts)
        kind = msg.get("kind")
        if kind == "tool":
            return self._call_tool(prompts, contexts, spent)
        validate_call(kind, prompts, contexts, L)
        n = len(prompts)
        if spent["calls"] + n > L.max_calls_per_cell:
            raise RuntimeError(f"sub-call limit reached: at most {L.max_calls_per_cell} sub-calls per cell")
        if self._calls_session + n > L.max_calls_per_session:
            raise RuntimeError(f"sub-call limit reached: at most {L.max_calls_per_session} sub-calls per session")
        spent["calls"] += n
        self._calls_session += n
        if kind == "rlm" and self.rlm_batch_handler is not None:
            assert contexts is not None  # validate_call: an rlm call carries one context per prompt
            results = list(self.rlm_batch_handler(prompts, contexts))
        elif kind == "rlm" and self.rlm_handler is not None:
            assert contexts is not None
            results = [self.rlm_handler(p, c) for p, c in zip(prompts, contexts)]
        else:
            results = self._llm(prompts)
        if not isinstance(results, list) or len(results) != n or not all(isinstance(r, str) for r in results):
            raise RuntimeError(f"the model server returned a malformed answer for {n} prompt(s)")
        return results

    def _call_tool(self, prompts: list[str], contexts: list[Any] | None, spent: _Spent) -> list[str]:
        """A tool function the cell called: [name, JSON [args, kwargs]] -> [JSON result]."""
        if len(prompts) != 2 or contexts is not None or prompts[0] not in self._tools:
            raise ValueError("unknown tool")
        if len(prompts[1]) > self.limits.max_prompt_chars:
            raise ValueError(f"tool arguments too large (limit {self.limits.max_prompt_chars} characters)")
        if spent["calls"] + 1 > self.limits.max_calls_per_cell:
            raise RuntimeError(f"call limit reached: at most {self.limits.max_calls_per_cell} calls per cell")
        spent["calls"] += 1
        try:
            args, kwargs = json.loads(prompts[1])
        except (ValueError, TypeError, RecursionError):
            raise ValueError("tool arguments must be JSON data") from None
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError("tool arguments must be JSON data")
        result = self._tools[prompts[0]](*args, **kwargs)
        try:
            return [json.dumps(result, ensure_ascii=False)]
        except (TypeError, ValueError):
            raise TypeError(f"tool {prompts[0]} returned {type(result).__name__}, not JSON data") from None

    def _llm(self, prompts: list[str]) -> list[str]:
        if self.llm_handler is None:
            raise RuntimeError("no sub-model is configured for llm_query in this session")
        return list(self.llm_handler(prompts))
