"""Parent side of a sandbox session: starts the worker, runs cells, serves sub-calls, enforces limits.

The worker is untrusted: everything it sends is validated here, caps on sub-calls are counted here, and
wall-clock time is enforced from here with SIGKILL (the worker's own snapshot then restores the session).
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref

from . import protocol
from .limits import CellResult, Limits, SandboxError, validate_call

WORKER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
# The worker's whole environment. The glibc tunable puts malloc'd memory on transparent huge pages, which
# makes the per-cell snapshot fork of a session holding 1 GB ~30x cheaper (page tables are copied per page).
CLEAN_ENV = {"LC_ALL": "C.UTF-8", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
RESTORE_WAIT_SECONDS = 15.0  # how long a paused snapshot may take to answer after its worker died
MAX_ERROR_CHARS = 20_000


def _site_dir() -> str:
    spec = importlib.util.find_spec("RestrictedPython")
    if spec is None or spec.origin is None:
        raise SandboxError("RestrictedPython is not installed")
    return os.path.dirname(os.path.dirname(spec.origin))


def _check_context(context) -> None:
    if not (context is None or isinstance(context, str)
            or (isinstance(context, (list, tuple)) and all(isinstance(c, str) for c in context))
            or (isinstance(context, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()))):
        raise TypeError("context must be a str, a list of str or a dict of str to str")


def _encode_context(context) -> tuple[str, bytes]:
    if context is None:
        context = ""
    if isinstance(context, str):
        try:
            return "str", context.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates, e.g. from surrogateescape-decoded files
            return "str", context.encode("utf-8", "surrogatepass")
    if isinstance(context, tuple):
        context = list(context)
    return "json", json.dumps(context, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _context_file(payload: bytes) -> tuple[int, str | None]:
    """The context goes to the worker once, as a file: an anonymous in-memory file (memfd) handed over
    as the worker's only extra descriptor, or, where memfd is missing, a 0600 temp file the worker
    deletes after reading. Returns (fd, None) or (-1, path)."""
    if hasattr(os, "memfd_create"):
        try:
            fd = os.memfd_create("rlm-sandbox-context", os.MFD_CLOEXEC)
        except OSError:
            fd = -1
        if fd >= 0:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            return fd, None
    fd, path = tempfile.mkstemp(prefix="rlm-sandbox-ctx-")
    with os.fdopen(fd, "wb") as f:
        f.write(payload)
    return -1, path


def _session_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


class _Worker:
    """One worker process group (the worker, its snapshot, and any successor after a restore)."""

    def __init__(self, proc: subprocess.Popen, max_line: int):
        self.proc = proc
        self.pgid = proc.pid  # start_new_session: the worker leads its own session and group
        self.live_pid = proc.pid
        self.out_fd = proc.stdin.fileno()
        os.set_blocking(self.out_fd, False)
        self.reader = protocol.LineReader(proc.stdout.fileno(), max_line)
        self.hardening: list[str] = []
        self.dead = False
        self.owner = os.getpid()  # a forked copy of the parent must not kill our worker at its exit

    def send(self, msg: dict, timeout: float = 30.0) -> None:
        protocol.write_all(self.out_fd, protocol.encode(msg), time.monotonic() + timeout)

    def kill_live(self) -> None:
        """SIGKILL the process now running cells; its snapshot takes over. The pid comes from the worker,
        so it is only trusted if it belongs to this worker's session."""
        pid = self.live_pid
        if pid == self.proc.pid or _session_of(pid) == self.pgid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            self.kill()

    def kill(self) -> None:
        if self.dead or os.getpid() != self.owner:
            return
        self.dead = True
        for _ in range(2):  # a snapshot may be mid-takeover during the first sweep
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class Sandbox:
    """A persistent, isolated Python REPL session for model-written code. One thread at a time."""

    def __init__(self, context=None, llm_handler=None, rlm_handler=None, limits: Limits | None = None):
        self.limits = limits or Limits()
        _check_context(context)
        self._context = context  # a reference, kept for restarts; encoded only when a worker starts
        self.llm_handler = llm_handler
        self.rlm_handler = rlm_handler
        self._lock = threading.Lock()
        self._closed = False
        self._calls_session = 0
        self._completed = 0  # cells whose results we accepted from the current worker
        self._worker: _Worker | None = None
        self._finalizer = None
        self.start_seconds = 0.0
        self._start()

    # lifecycle -----------------------------------------------------------------------------------------
    def _start(self) -> None:
        t0 = time.monotonic()
        kind, payload = _encode_context(self._context)
        fd, path = _context_file(payload)
        del payload
        try:
            debug = os.environ.get("RLM_SANDBOX_DEBUG")
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", WORKER_PATH, _site_dir()],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None if debug else subprocess.DEVNULL,
                env=CLEAN_ENV, cwd="/", close_fds=True, pass_fds=(fd,) if path is None else (),
                start_new_session=True)
            worker = _Worker(proc, 4 * int(self.limits.max_call_chars) + (16 << 20))
            self._finalizer = weakref.finalize(self, worker.kill)
            self._worker = worker
            deadline = t0 + self.limits.start_seconds
            worker.send({"op": "init", "context_fd": fd if path is None else None, "context_path": path,
                         "context_kind": kind, "memory_mb": int(self.limits.memory_mb),
                         "output_chars": int(self.limits.output_chars),
                         "call_limits": {"max_prompts_per_call": int(self.limits.max_prompts_per_call),
                                         "max_prompt_chars": int(self.limits.max_prompt_chars),
                                         "max_call_chars": int(self.limits.max_call_chars)},
                         "host_dir": os.path.dirname(os.path.dirname(WORKER_PATH))})
            msg = worker.reader.read(deadline)
            if not msg or msg.get("type") != "ready" or not isinstance(msg.get("pid"), int):
                raise SandboxError("sandbox worker sent an unexpected greeting")
            worker.live_pid = msg["pid"]
            self._completed = 0
            worker.hardening = [str(h) for h in msg.get("hardening", [])]
        except (protocol.ChannelClosed, protocol.ChannelTimeout, OSError) as e:
            self._discard_worker()
            raise SandboxError(f"sandbox worker failed to start: {type(e).__name__}: {e}") from None
        except BaseException:
            self._discard_worker()
            raise
        finally:
            if path is not None:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            else:
                os.close(fd)
        self.start_seconds = time.monotonic() - t0

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

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # running cells --------------------------------------------------------------------------------------
    def run(self, code: str, *, wall_seconds: float | None = None) -> CellResult:
        """Runs one cell. ``wall_seconds`` lowers this cell's wall-clock (and CPU) limit below
        ``limits.wall_seconds``, e.g. to the time left in a run's budget."""
        if not isinstance(code, str):
            raise TypeError("code must be a str")
        return self._op({"code": code}, wall_seconds)

    def read_variable(self, name: str, *, wall_seconds: float | None = None) -> CellResult:
        """Reads REPL variable ``name`` without running a code cell: ``result.value`` is the value as plain
        data (str, int, float, bool, None, lists and dicts of them; other objects as their ``str()``),
        ``result.error`` says when there is no such variable. Runs under the same limits as a cell."""
        if not isinstance(name, str):
            raise TypeError("name must be a str")
        return self._op({"read": name}, wall_seconds)

    def _op(self, op: dict, wall_seconds: float | None) -> CellResult:
        with self._lock:
            if self._closed:
                raise SandboxError("sandbox is closed")
            note = None
            if self._worker is None:
                self._start()
                note = "note: the sandbox was restarted earlier; variables from before were lost"
            try:
                result = self._run(op, wall_seconds)
            except BaseException:
                # e.g. KeyboardInterrupt inside a handler: the worker is mid-conversation, start afresh
                self._discard_worker()
                raise
            if note:
                result.stdout = f"[{note}]\n{result.stdout}"
            return result

    def _run(self, op: dict, wall_seconds: float | None) -> CellResult:
        L, w = self.limits, self._worker
        wall = L.wall_seconds if wall_seconds is None else max(0.01, min(L.wall_seconds, wall_seconds))
        t0 = time.monotonic()
        spent = {"sub": 0.0, "calls": 0}
        self._drain_idle_messages()
        try:
            w.send({"op": "run", **op, "cpu_seconds": float(min(L.cpu_seconds, wall)),
                    "output_chars": int(L.output_chars)})
        except (protocol.ChannelClosed, protocol.ChannelTimeout, OSError):
            return self._restart(t0, spent, "the sandbox worker stopped responding", timed_out=False)
        while True:
            deadline = t0 + spent["sub"] + wall
            try:
                msg = w.reader.read(deadline)
            except protocol.ChannelTimeout:
                w.kill_live()
                return self._await_restore(t0, spent, f"TimeoutError: the cell ran longer than the wall-clock "
                                           f"limit of {wall:g} s and was stopped")
            except protocol.ChannelClosed:
                return self._restart(t0, spent, "the sandbox worker crashed", timed_out=False)
            kind = msg.get("type") if msg else None
            if kind == "result":
                return self._result(msg, t0, spent)
            if kind == "call":
                s0 = time.monotonic()
                reply = self._serve_call(msg, spent)
                spent["sub"] += time.monotonic() - s0
                try:
                    w.send(reply)
                except (protocol.ChannelClosed, protocol.ChannelTimeout, OSError):
                    return self._restart(t0, spent, "the sandbox worker stopped responding", timed_out=False)
            elif kind == "restored":  # the worker died on its own (CPU rlimit or a crash); snapshot took over
                w.live_pid = msg.get("pid") if isinstance(msg.get("pid"), int) else w.live_pid
                return self._stopped(t0, spent, f"TimeoutError: the cell used more than its CPU time limit of "
                                     f"{L.cpu_seconds:g} s (or crashed) and was stopped", restored=True)
            else:
                w.kill()
                return self._restart(t0, spent, "the sandbox worker sent a malformed message", timed_out=False)

    def _drain_idle_messages(self) -> None:
        """A worker that died while idle was replaced by its snapshot, which said so; nothing was lost
        because the snapshot holds the state after the last cell."""
        w = self._worker
        while True:
            try:
                msg = w.reader.read(time.monotonic())
            except (protocol.ChannelTimeout, protocol.ChannelClosed):
                return
            if msg and msg.get("type") == "restored" and isinstance(msg.get("pid"), int):
                w.live_pid = msg["pid"]

    def _await_restore(self, t0: float, spent: dict, reason: str) -> CellResult:
        """After a kill, wait for the snapshot's 'restored'. If the cell's result slipped out just before
        the kill, the snapshot may hold the state after the cell: its 'completed' count says which."""
        w = self._worker
        late_result = None
        deadline = time.monotonic() + RESTORE_WAIT_SECONDS
        while True:
            try:
                msg = w.reader.read(deadline)
            except (protocol.ChannelTimeout, protocol.ChannelClosed):
                return self._restart(t0, spent, reason, timed_out=True)
            if msg and msg.get("type") == "result" and late_result is None:
                late_result = msg
            elif msg and msg.get("type") == "restored" and isinstance(msg.get("pid"), int):
                w.live_pid = msg["pid"]
                if late_result is not None and msg.get("completed") == self._completed + 1:
                    return self._result(late_result, t0, spent)
                return self._stopped(t0, spent, reason, restored=True)

    def _stopped(self, t0: float, spent: dict, reason: str, restored: bool) -> CellResult:
        tail = ("; the session is back in the state it had before this cell (its output and changes are lost)"
                if restored else "")
        return CellResult(stdout="", error=reason + tail, final=None, timed_out=True, restored=restored,
                          seconds=time.monotonic() - t0 - spent["sub"], subcall_seconds=spent["sub"],
                          calls=spent["calls"])

    def _restart(self, t0: float, spent: dict, reason: str, timed_out: bool) -> CellResult:
        self._discard_worker()
        if self._closed:  # close() from another thread while this cell ran
            error = f"{reason}: the sandbox was closed"
        else:
            error = (f"{reason}. The sandbox was restarted: all variables you defined were lost "
                     "(the context variables are loaded again).")
            try:
                self._start()
            except SandboxError as e:
                error += f" Restart failed: {e}"
        return CellResult(stdout="", error=error, final=None, timed_out=timed_out, restored=False,
                          seconds=time.monotonic() - t0 - spent["sub"], subcall_seconds=spent["sub"],
                          calls=spent["calls"])

    def _result(self, msg: dict, t0: float, spent: dict) -> CellResult:
        self._completed += 1
        cap = int(self.limits.output_chars)
        stdout = msg.get("stdout") if isinstance(msg.get("stdout"), str) else ""
        if len(stdout) > cap + 200:  # the worker should have capped it already; never trust it
            stdout = stdout[:cap] + f"\n... [output truncated: {len(stdout) - cap} more characters]\n"
        error = msg.get("error") if isinstance(msg.get("error"), str) else None
        final = msg.get("final") if isinstance(msg.get("final"), str) else None
        return CellResult(stdout=stdout, error=error[:MAX_ERROR_CHARS] if error else None, final=final,
                          seconds=time.monotonic() - t0 - spent["sub"], subcall_seconds=spent["sub"],
                          calls=spent["calls"], value=msg.get("value"))

    # sub-calls ------------------------------------------------------------------------------------------
    def _serve_call(self, msg: dict, spent: dict) -> dict:
        try:
            results = self._call_handler(msg, spent)
        except Exception as e:  # message only: the model must never see a host traceback
            text = str(e)
            return {"op": "reply", "ok": False,
                    "error": (f"{type(e).__name__}: {text}" if text else type(e).__name__)[:2000]}
        return {"op": "reply", "ok": True, "results": results}

    def _call_handler(self, msg: dict, spent: dict) -> list[str]:
        L = self.limits
        kind, prompts, context = validate_call(msg, L)
        n = len(prompts)
        if spent["calls"] + n > L.max_calls_per_cell:
            raise RuntimeError(f"sub-call limit reached: at most {L.max_calls_per_cell} sub-calls per cell")
        if self._calls_session + n > L.max_calls_per_session:
            raise RuntimeError(f"sub-call limit reached: at most {L.max_calls_per_session} sub-calls per session")
        spent["calls"] += n
        self._calls_session += n
        if kind == "rlm" and self.rlm_handler is not None:
            results = [self.rlm_handler(prompts[0], context)]
        else:
            results = self._llm(prompts)
        if not isinstance(results, list) or len(results) != n or not all(isinstance(r, str) for r in results):
            raise RuntimeError(f"the model server returned a malformed answer for {n} prompt(s)")
        return results

    def _llm(self, prompts: list[str]) -> list[str]:
        if self.llm_handler is None:
            raise RuntimeError("no sub-model is configured for llm_query in this session")
        return list(self.llm_handler(prompts))
