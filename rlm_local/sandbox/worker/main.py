"""Sandbox worker: a fresh interpreter that runs one REPL session (process main, never imported by the
parent). Started as ``python -I -S worker/main.py SITE_DIR SOCKET_FD``; it imports only the stdlib,
RestrictedPython and its sibling files, so it starts fast and never sees the parent's modules or secrets.

Life of a worker: move the protocol pipes off fds 0-2 -> build the guards (a pooled worker waits here,
warm, for its session) -> read ``init`` (limits, tools; the context arrives as a memfd over the socket,
or as a file) -> load the context -> harden the process -> run the prelude (if any) -> loop { send what
is pending (``ready``, a result, ``restored``), naming our pid and our snapshot's; on the parent's
``go`` (sent once it has swept the session's strays, sparing those two) release that snapshot and fork
a paused one of the current state, off the next cell's critical path; read ``run``; execute the cell
under a CPU rlimit }. Work never starts without a snapshot of the state before it. When the parent kills
us (wall time, a malformed message) or the kernel does (CPU time), the snapshot sees its pipe close and
carries on as the worker, in the state it was forked with: it says so on a fresh line, skips whatever is
left on its input up to the parent's ``resync`` line and answers it with the parent's token and the
number of cells whose effects it holds, so nothing the dead worker wrote can pass for its answer.

Only the Channel writes to the protocol pipe: fds 1 and 2 are a capture pipe whose contents (C code
writing to stdout, ``re.DEBUG``, unraisable-exception reports) become the cell's output, and
``sys.stdout``/``sys.stderr`` print into the cell's output directly. The worker reaps every child it
has (the parent kills strays at each cell end; as a child subreaper the worker inherits their orphans).
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
import socket
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
        self.cell_id = ""  # the parent's id of the cell now running: its messages carry it

    def send(self, msg: dict, parts: Sequence[str] = (), fresh_line: bool = False) -> None:
        protocol.write_all(self.fd_out, (b"\n" if fresh_line else b"") + protocol.encode(msg, parts))

    def read(self) -> tuple[dict, list[str]]:
        """The next message; a garbled one means our input is out of step: skip to the parent's resync."""
        msg = self.reader.read_header()
        if msg is None:
            return self.reader.scan_for(_is_resync), []
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
            self.send({"type": "call", "id": self.cell_id, "kind": kind, **fields}, parts)
            reply, results = self.read()
        finally:
            if collecting:
                gc.enable()
        if reply.get("op") != "reply":  # (a resync here: the parent gave up on this cell)
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


def _set_cpu_limit(seconds: float | None) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if seconds is None:
        resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
        return
    soft = max(1, math.ceil(hardening.cpu_used() + seconds))
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
        self.pid, self.release_fd = None, None
        hardening.prctl(hardening.PR_SET_CHILD_SUBREAPER, 1)  # not inherited: orphans come to us now
        return True

    def release(self) -> None:
        """Lets the snapshot go (it exits) and reaps every child that has ended: released snapshots and
        the strays the parent killed."""
        if self.release_fd is not None:
            try:
                os.write(self.release_fd, b"x")
            except OSError:
                pass  # it is gone already (the parent's sweep kills a snapshot it was not told about)
            finally:
                os.close(self.release_fd)
            self.pid = self.release_fd = None
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    return
            except ChildProcessError:
                return


def _is_resync(header: dict) -> bool:
    return header.get("op") == "resync" and type(header.get("token")) is str


def _context_fd(init: dict, sock: socket.socket | None) -> int | None:
    """The context's memfd, received over the socket (the parent sends it with init), or None."""
    if not init.get("context_fd") or sock is None:
        return None
    _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    return fds[0] if fds else None


def _load_context(init: dict, fd: int | None):
    if fd is not None:
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


def _open_session(channel: Channel, capture: FdCapture, sock: socket.socket | None) -> tuple[repl.Repl, dict]:
    """Everything before the first cell: guards (built before init, so a pooled worker has them warm),
    init, context, hardening, prelude. Returns the session and the ``ready`` greeting."""
    guards = repl.prepare_guards()
    channel.send({"type": "waiting"})  # warm: a pool may hand us out now
    init, init_parts = channel.read()
    channel.limits = dict(init["limits"])
    context = _load_context(init, _context_fd(init, sock))
    if sock is not None:
        sock.close()
    scrub = [
        os.path.dirname(HERE),
        sys.argv[1],
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        os.path.dirname(sys.executable),
        init.get("host_dir", ""),
    ]
    session = repl.Repl(context, channel.call, channel.limits, scrub, capture.drain, guards=guards)
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
    lim = channel.limits
    applied = hardening.apply(
        int(lim["memory_mb"]), init.get("uid"), int(lim["max_processes"]), float(lim["session_cpu_seconds"])
    )
    gc.freeze()  # the interpreter's and RestrictedPython's objects: never garbage, never scanned again
    if init.get("prelude") and len(init_parts) > 1:  # model-level code: only once the process is hardened
        _set_cpu_limit(float(init.get("prelude_cpu_seconds", 60)))
        failed = session.run_prelude(init_parts[1])
        _set_cpu_limit(None)
        if failed is not None:
            channel.send({"type": "failed"}, [failed[:4000]])
            os._exit(0)
    return session, {"type": "ready", "hardening": applied}


def _run_cell(session: repl.Repl, channel: Channel, msg: dict, code: str) -> tuple[dict, list[str]]:
    t0 = time.perf_counter()
    channel.cell_id = cell_id = str(msg.get("id", ""))
    _set_cpu_limit(float(msg["cpu_seconds"]))
    try:
        result = session.read(code) if msg.get("read") else session.run(code)
    except repl.Unsettled as e:  # hand the session back to the snapshot, which holds it as before the cell
        channel.send({"type": "abandon", "id": cell_id}, [str(e)])
        os._exit(3)
    _set_cpu_limit(None)
    fields = ["stdout", "error", "final", "value"]
    head = {
        "type": "result",
        "id": cell_id,
        "worker_seconds": time.perf_counter() - t0,
        "present": [result[k] is not None for k in fields],
    }
    return head, [result[k] or "" for k in fields]


def _add_context(session: repl.Repl, msg: dict, parts: list[str]) -> tuple[dict, list[str]]:
    try:
        value = parts[0] if msg.get("kind") == "str" else json.loads(parts[0])
        name = session.add_context(value, msg.get("name"))
        if msg.get("as_context"):
            session.add_context(value, "context")
        return {"type": "added"}, [name]
    except (ValueError, TypeError) as e:
        return {"type": "added", "error": True}, [str(e)]


def main() -> None:
    gc.disable()  # model code must not run from an automatic collection between cells (repl.py)
    fd_in, fd_out, capture = _private_fds()
    sock = socket.socket(fileno=int(sys.argv[2])) if len(sys.argv) > 2 else None
    channel = Channel(fd_in, fd_out)
    try:
        session, greeting = _open_session(channel, capture, sock)
    except Exception as e:  # e.g. a broken install: the parent says why instead of "did not load"
        channel.send({"type": "failed"}, [f"{type(e).__name__}: {e}"[:4000]])
        os._exit(1)
    snapshot = Snapshot()
    pending: tuple[dict, list[str]] | None = (greeting, [])
    completed = 0  # cells whose effects this process holds; a snapshot tells the parent which state it has
    fresh = True  # the state changed since the snapshot was forked: fork a new one (on "go", or before work)
    while True:
        try:
            if pending is not None:  # names the snapshot of the state before it: the one the parent spares
                head, parts = pending
                channel.send({**head, "pid": os.getpid(), "snapshot": snapshot.pid}, parts)
                pending = None
            msg, parts = channel.read()
        except (protocol.ChannelClosed, OSError):
            break
        op = msg.get("op")
        if fresh and op != "resync":  # "go" (the parent swept after our answer), or work: snapshot first
            snapshot.release()
            if snapshot.make():  # we are the snapshot and our parent died: say so, then wait for the resync
                capture.drain()  # what the dead cell's C code wrote is not ours to show
                try:
                    channel.send({"type": "restored"}, fresh_line=True)
                    token = channel.reader.scan_for(_is_resync)["token"]
                except (protocol.ChannelClosed, OSError):
                    break
                pending = ({"type": "restored", "token": token, "completed": completed}, [])
                continue  # (fresh stays True: our own snapshot comes with the parent's next "go")
            fresh = False
        if op == "go":
            continue
        if op == "resync":
            pending = ({"type": "restored", "token": msg.get("token"), "completed": completed}, [])
        elif op == "add" and len(parts) == 1:  # a context added between cells
            pending, fresh = _add_context(session, msg, parts), True
        elif op == "run" and len(parts) == 1:
            pending, fresh = _run_cell(session, channel, msg, parts[0]), True
            completed += 1
        else:
            break
    snapshot.release()
    os._exit(0)


if __name__ == "__main__":
    main()
