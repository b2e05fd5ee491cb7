"""Sandbox worker: a fresh interpreter that runs one REPL session (process main, never imported by the
parent). Started as ``python -I -S worker/main.py SITE_DIR``; it imports only the stdlib, RestrictedPython and
its sibling files, so it starts fast and never sees the parent's modules or secrets.

Life of a worker: move the protocol pipes off fds 0-2 -> read ``init`` (context memfd or file, limits)
-> load the context -> harden the process -> run the prelude (if any) -> loop { fork a paused snapshot; send ``ready``/``restored``;
read ``run``; execute the cell under a CPU rlimit; send ``result``; release the snapshot }. When the
parent kills us for wall time, or the kernel does for CPU time, the snapshot sees its pipe close and
carries on as the worker, in the state from before the cell.

Only the Channel writes to the protocol pipe: fds 1 and 2 are a capture pipe whose contents (C code
writing to stdout, ``re.DEBUG``, unraisable-exception reports) become the cell's output, and
``sys.stdout``/``sys.stderr`` print into the cell's output directly.
"""

from __future__ import annotations

import codecs
import fcntl
import gc
import json
import math
import mmap
import os
import resource
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if __name__ == "__main__":
    HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [HERE, sys.argv[1]]
    import RestrictedPython  # noqa: F401,E402  (load it while its directory is on the path)

    sys.path.remove(sys.argv[1])

if TYPE_CHECKING:  # mypy checks this folder as the package rlm_local.sandbox.worker
    from . import hardening, protocol, repl
else:  # the worker runs as a script, with this folder on its path
    import hardening
    import protocol
    import repl

CAPTURE_PIPE_BYTES = 1 << 20  # what C code may write to fds 1/2 in one cell; beyond, its writes fail
F_SETPIPE_SZ = 1031


class Channel:
    """The worker's end of the protocol, on private fds (never 0, 1 or 2)."""

    def __init__(self, fd_in: int, fd_out: int):
        self.reader = protocol.Reader(fd_in, 1 << 40)  # the parent is trusted
        self.fd_out = fd_out
        self.limits: dict = {}

    def send(self, msg: dict, parts: Sequence[str] = (), fresh_line: bool = False) -> None:
        protocol.write_all(self.fd_out, (b"\n" if fresh_line else b"") + protocol.encode(msg, parts))

    def read(self) -> tuple[dict, list[str]]:
        msg = self.reader.read_header()
        if msg is None:
            raise protocol.ChannelClosed("garbled message")
        return msg, self.reader.read_parts(msg)

    def call(self, kind: str, prompts: list[str], contexts: list | None = None) -> list[str]:
        lim = self.limits
        try:  # early, readable refusals; the parent enforces the same rules on what arrives
            protocol.check_call_size(
                prompts,
                contexts,
                lim["max_prompts_per_call"],
                lim["max_prompt_chars"],
                lim["max_call_chars"],
                lim["max_call_items"],
            )
        except ValueError as e:
            raise RuntimeError(f"ValueError: {e}") from None
        fields, parts = protocol.call_parts(prompts, contexts)
        collecting = gc.isenabled()
        gc.disable()  # no finalizer of the model may run in the middle of a protocol exchange
        try:
            self.send({"type": "call", "kind": kind, **fields}, parts)
            reply, results = self.read()
        finally:
            if collecting:
                gc.enable()
        if reply.get("op") != "reply":
            raise RuntimeError("sandbox protocol error")
        if not reply.get("ok"):
            raise RuntimeError(results[0] if results else "sub-call failed")
        return results


class FdCapture:
    """fds 1 and 2 point at a non-blocking pipe that the worker drains after each cell."""

    def __init__(self):
        self.read_fd, write_fd = os.pipe()
        try:
            fcntl.fcntl(write_fd, F_SETPIPE_SZ, CAPTURE_PIPE_BYTES)
        except OSError:
            pass
        os.set_blocking(self.read_fd, False)
        os.set_blocking(write_fd, False)  # C code that floods it gets EAGAIN, never blocks the cell
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)

    def drain(self, cap: int = CAPTURE_PIPE_BYTES) -> str:
        chunks, size = [], 0
        while size < cap:
            try:
                chunk = os.read(self.read_fd, 1 << 16)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks).decode("utf-8", "replace")


class HostStream:
    """sys.stdout / sys.stderr: host Python code that prints (re.DEBUG, warnings) prints into the cell."""

    def __init__(self, session: repl.Repl):
        self.session = session

    def write(self, text) -> int:
        self.session.printer.write(text)
        return len(text) if isinstance(text, str) else 0

    def flush(self) -> None:
        pass


def _cpu_used() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _set_cpu_limit(seconds: float | None) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if seconds is None:
        resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
        return
    soft = max(1, math.ceil(_cpu_used() + seconds))
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


class Snapshot:
    """A paused fork of the worker, waiting on a private pipe: a byte means 'not needed' (exit); end of
    file without a byte means the worker died during a cell (the kernel closed its end), so the snapshot
    takes over. No signals are involved, so nothing can interrupt the takeover halfway."""

    def __init__(self):
        self.pid: int | None = None
        self.release_fd: int | None = None
        self.zombies: list[int] = []

    def make(self) -> bool:
        """Fork; returns True in the child once it has taken over, False in the live worker."""
        try:
            r, w = os.pipe()
            pid = os.fork()
        except OSError:
            return False
        if pid:
            os.close(r)
            self.pid, self.release_fd = pid, w
            return False
        os.close(w)
        while True:
            try:
                data = os.read(r, 1)
                break
            except InterruptedError:
                continue
        if data:
            os._exit(0)
        os.close(r)
        self.pid, self.release_fd, self.zombies = None, None, []
        return True

    def release(self) -> None:
        if self.release_fd is not None:
            try:
                os.write(self.release_fd, b"x")
            finally:
                os.close(self.release_fd)
            assert self.pid is not None  # make() sets pid and release_fd together
            self.zombies.append(self.pid)
            self.pid = self.release_fd = None
        for pid in list(self.zombies):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    self.zombies.remove(pid)
            except ChildProcessError:
                self.zombies.remove(pid)


def _load_context(init: dict):
    if init.get("context_fd") is not None:
        fd = int(init["context_fd"])
        size = os.fstat(fd).st_size
        data = mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else b""
        os.close(fd)
    else:
        path = init["context_path"]
        with open(path, "rb") as f:
            data = f.read()
        try:
            os.unlink(path)
        except OSError:
            pass
    text = codecs.utf_8_decode(data, "surrogatepass", True)[0]  # decodes straight from the mapping
    if isinstance(data, mmap.mmap):
        data.close()
    return text if init["context_kind"] == "str" else json.loads(text)


def _private_fds() -> tuple[int, int, FdCapture]:
    """Moves the protocol pipes off fds 0 and 1 and points 0 at /dev/null, 1 and 2 at the capture pipe."""
    fd_in, fd_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return fd_in, fd_out, FdCapture()


def main() -> None:
    gc.disable()  # model code must not run from an automatic collection between cells (repl.py)
    fd_in, fd_out, capture = _private_fds()
    channel = Channel(fd_in, fd_out)
    init, init_parts = channel.read()
    channel.limits = dict(init["limits"])
    context = _load_context(init)
    scrub = [
        os.path.dirname(HERE),
        sys.argv[1],
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        os.path.dirname(sys.executable),
        init.get("host_dir", ""),
    ]
    session = repl.Repl(context, channel.call, channel.limits, scrub, capture.drain)
    session.add_tools(init.get("tool_functions") or [], json.loads(init_parts[0]) if init_parts else {})
    del context
    sys.stdout = sys.stderr = HostStream(session)
    if init.get("grant_real_os"):  # test-only hook (tests/sandbox/test_post_escape.py): a full escape
        session.reserved.update(
            real_os=os,
            real_sys=sys,
            real_ctypes=hardening.ctypes,
            real_exit=os._exit,
            _getattr_=getattr,
            _getitem_=lambda obj, key: obj[key],
            _write_=lambda obj: obj,
        )
        session.globals.update(session.reserved)
    applied = hardening.apply(int(channel.limits["memory_mb"]), init.get("uid"), int(channel.limits["max_processes"]))
    gc.freeze()  # the interpreter's and RestrictedPython's objects: never garbage, never scanned again
    if init.get("prelude") and len(init_parts) > 1:  # model-level code: only once the process is hardened
        _set_cpu_limit(float(init.get("prelude_cpu_seconds", 60)))
        failed = session.run_prelude(init_parts[1])
        _set_cpu_limit(None)
        if failed is not None:
            channel.send({"type": "failed"}, [failed[:4000]])
            os._exit(0)
    snapshot = Snapshot()
    greeting: dict[str, object] | None = {"type": "ready", "pid": os.getpid(), "hardening": applied}
    completed = 0  # cells whose effects this process holds; a snapshot tells the parent which state it has
    while True:
        if snapshot.make():  # we are the snapshot and our parent died mid-cell
            capture.drain()  # what the dead cell's C code wrote is not ours to show
            greeting = {"type": "restored", "pid": os.getpid(), "completed": completed}
            continue
        try:
            if greeting:
                channel.send(greeting, fresh_line=greeting["type"] == "restored")
                greeting = None
            msg, parts = channel.read()
        except (protocol.ChannelClosed, OSError):
            break
        if msg.get("op") == "add" and len(parts) == 1:  # a context added between cells
            try:
                value = parts[0] if msg.get("kind") == "str" else json.loads(parts[0])
                name = session.add_context(value, msg.get("name"))
                if msg.get("as_context"):
                    session.add_context(value, "context")
                channel.send({"type": "added"}, [name])
            except (ValueError, TypeError) as e:
                channel.send({"type": "added", "error": True}, [str(e)])
            snapshot.release()  # the next snapshot must hold the new context too
            continue
        if msg.get("op") != "run" or len(parts) != 1:
            break
        t0 = time.perf_counter()
        _set_cpu_limit(float(msg["cpu_seconds"]))
        try:
            result = session.read(parts[0]) if msg.get("read") else session.run(parts[0])
        except repl.Unsettled as e:  # hand the session back to the snapshot, which holds it as before the cell
            channel.send({"type": "abandon"}, [str(e)])
            os._exit(3)
        _set_cpu_limit(None)
        completed += 1
        fields = ["stdout", "error", "final", "value"]
        try:
            channel.send(
                {
                    "type": "result",
                    "worker_seconds": time.perf_counter() - t0,
                    "present": [result[k] is not None for k in fields],
                },
                [result[k] or "" for k in fields],
            )
        except (protocol.ChannelClosed, OSError):
            break
        snapshot.release()
    snapshot.release()
    os._exit(0)


if __name__ == "__main__":
    main()
