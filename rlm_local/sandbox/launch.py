"""Starting, reading, recovering and killing a sandbox worker process (parent side).

A worker is spawned bare (``Worker.spawn``: it builds its guards and waits) and then given its session
(``init``: limits, tools, prelude, and the context as a memfd over a socket), so a pool can spawn ahead.

Kill scope: the worker leads its own process group and, where the machine allows, its own cgroup
(cgroup.py). Its seccomp filter forbids ``setsid``/``setpgid`` and ``CLONE_PARENT``, so no process it
makes can leave the group or be adopted by the parent, and the cgroup holds every process whatever
happens; ``kill()`` sweeps both. After every cell ``sweep()`` kills every process of the session but
the live worker and its snapshot.

Recovery (``recover``): after a kill, a timeout or any message that is malformed, over its cap or out of
turn, the parent kills the live worker, writes a ``resync`` line with a fresh random token and skips
everything on the pipe up to the line that echoes it: only the snapshot, reading after the kill, can
know the token, so nothing the dead worker wrote (a forged result, a lying size) can desync a later cell.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from .cgroup import SessionCgroup
from .limits import Limits, SandboxError, check_call_header
from .worker import protocol

WORKER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker", "main.py")
# The worker's whole environment. The glibc tunable puts malloc'd memory on transparent huge pages, which
# makes the per-cell snapshot fork of a session holding 1 GB ~30x cheaper (page tables are copied per page).
CLEAN_ENV = {"LC_ALL": "C.UTF-8", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
SESSION_UIDS = (0x5A000000, 0x5AFFFFFF)  # a uid per session, in a range no account uses
MEMORY_SLACK = 64 << 20  # cgroup: the snapshot's and the interpreter's own pages on top of memory_mb
RECOVER_BYTES = 64 << 20  # what recover() skips at most before it gives up on the worker
LIMIT_NAMES = (  # the Limits the worker enforces itself (the parent enforces all of them again)
    "output_chars",
    "memory_mb",
    "max_prompts_per_call",
    "max_prompt_chars",
    "max_call_chars",
    "max_call_items",
    "max_final_chars",
    "max_error_chars",
    "max_processes",
    "session_cpu_seconds",
)


def _site_dir() -> str:
    spec = importlib.util.find_spec("RestrictedPython")
    if spec is None or spec.origin is None:
        raise SandboxError("RestrictedPython is not installed")
    return os.path.dirname(os.path.dirname(spec.origin))


def encode_context(context: object) -> tuple[str, bytes]:
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


def context_file(payload: bytes) -> tuple[int, str | None]:
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
                view = view[os.write(fd, view) :]
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


class Worker:
    """One worker process group (the worker, its snapshot, and any successor after a restore)."""

    def __init__(self, cgroup: SessionCgroup | None, debug: bool):
        self.limits = Limits()
        self.cgroup = cgroup
        self.sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", WORKER_PATH, _site_dir(), str(child_sock.fileno())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None if debug else subprocess.DEVNULL,
                env=CLEAN_ENV,
                cwd="/",
                close_fds=True,
                pass_fds=(child_sock.fileno(),),
                start_new_session=True,
            )
        finally:
            child_sock.close()
        self.pgid = self.proc.pid  # start_new_session: the worker leads its own session and group
        self.live_pid = self.proc.pid
        self.snapshot_pid: int | None = None
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both are PIPEs
        self.out_fd = self.proc.stdin.fileno()
        os.set_blocking(self.out_fd, False)
        self.reader = protocol.Reader(self.proc.stdout.fileno())
        self.hardening: list[str] = []
        self.warm = False  # it said it waits for init (its interpreter and guards are loaded)
        self.failure = "it did not say why"  # why it could not load, when it could not
        self.dead = False
        self.owner = os.getpid()  # a forked copy of the parent must not kill our worker at its exit
        if cgroup is not None:
            try:  # the worker waits for init before running anything, so it cannot race this
                cgroup.add(self.proc.pid)
            except OSError:
                cgroup.remove()
                self.cgroup = None

    @classmethod
    def spawn(cls) -> Worker:
        """A bare worker: it loads the interpreter and builds its guards, then waits for ``init``."""
        cgroup = SessionCgroup.create(int(Limits().max_processes))
        return cls(cgroup, bool(os.environ.get("RLM_SANDBOX_DEBUG")))

    @classmethod
    def start(cls, context: object, limits: Limits, host_dir: str, **session: Any) -> Worker:
        """A new worker with its session (see ``init``)."""
        worker = cls.spawn()
        worker.init(context, limits, host_dir, **session)
        return worker

    def wait_warm(self, deadline: float) -> bool:
        """Waits until the worker has loaded and waits for its session; False (and killed) if it fails."""
        if not self.warm:
            try:
                msg, parts = self.read(deadline)
                self.warm = msg.get("type") == "waiting"
                if msg.get("type") == "failed" and parts:
                    self.failure = parts[0][:2000]
            except (protocol.ChannelClosed, protocol.ChannelTimeout, protocol.Malformed, OSError) as e:
                self.failure = f"{type(e).__name__}: {e}"
            if not self.warm:
                self.kill()
        return self.warm

    def alive(self) -> bool:
        return not self.dead and self.proc.poll() is None

    def init(
        self,
        context: object,
        limits: Limits,
        host_dir: str,
        tools: tuple[list[str], dict] = ([], {}),
        grant_real_os: bool = False,
        prelude: str | None = None,
    ) -> None:
        """Hands the worker its session (the context once, as a memfd or a file; the prelude, which it runs
        before greeting) and waits for its greeting, bounded by start_seconds. Raises SandboxError (the
        worker is killed), e.g. when the prelude fails."""
        t0 = time.monotonic()
        self.limits = limits
        kind, payload = encode_context(context)
        fd, path = context_file(payload)
        del payload
        try:
            if self.cgroup is not None:
                self.cgroup.limit_processes(int(limits.max_processes))
            if fd >= 0:
                socket.send_fds(self.sock, [b"c"], [fd])
            self.send(
                {
                    "op": "init",
                    "context_fd": fd >= 0,
                    "context_path": path,
                    "context_kind": kind,
                    "limits": {n: int(getattr(limits, n)) for n in LIMIT_NAMES},
                    "uid": secrets.randbelow(SESSION_UIDS[1] - SESSION_UIDS[0]) + SESSION_UIDS[0],
                    "host_dir": host_dir,
                    "grant_real_os": grant_real_os,
                    "tool_functions": tools[0],
                    "prelude": prelude is not None,
                    "prelude_cpu_seconds": float(limits.cpu_seconds),
                },
                [json.dumps(tools[1], ensure_ascii=False), prelude or ""],
            )
            if not self.warm and not self.wait_warm(t0 + limits.start_seconds):
                raise SandboxError(f"sandbox worker failed to load: {self.failure}")
            msg, parts = self.read(t0 + limits.start_seconds)
            if msg.get("type") == "failed":
                raise SandboxError(f"the sandbox prelude failed: {(parts[0] if parts else '')[:2000]}")
            if msg.get("type") != "ready" or not self.note_pids(msg):
                raise SandboxError("sandbox worker sent an unexpected greeting")
            self.hardening = [str(h) for h in msg.get("hardening", [])][:32]
            self._limit_cgroup(limits)
            self.answered()
        except (protocol.ChannelClosed, protocol.ChannelTimeout, protocol.Malformed, OSError) as e:
            self.kill()
            raise SandboxError(f"sandbox worker failed to start: {type(e).__name__}: {e}") from None
        except BaseException:
            self.kill()
            raise
        finally:
            self.sock.close()
            if path is not None:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            else:
                os.close(fd)

    def _limit_cgroup(self, limits: Limits) -> None:
        if self.cgroup is None:
            return
        try:
            self.cgroup.limit_memory(int(limits.memory_mb) * (1 << 20) + MEMORY_SLACK)
            self.hardening.append("cgroup")
        except (OSError, ValueError):
            return
        if self.cgroup.limit_cpu(limits.cpu_cores):
            self.hardening.append("cgroup-cpu")

    def send(self, msg: dict, parts: Sequence[str] = (), timeout: float = 30.0, fresh_line: bool = False) -> None:
        data = (b"\n" if fresh_line else b"") + protocol.encode(msg, parts)
        protocol.write_all(self.out_fd, data, time.monotonic() + timeout)

    def read(self, deadline: float | None) -> tuple[dict, list[str]]:
        """Next message and its parts, every size checked against the limits before it is read.
        Raises ChannelClosed at the end of the pipe, Malformed for anything that is not a message
        (garbage, hostile nesting) and its subclass MessageTooLarge for a message over its cap."""
        try:
            header = self.reader.read_header(deadline)
            if header is None:
                raise protocol.Malformed("the sandbox worker sent something that is not a message")
            self._check_sizes(header)
        except protocol.Malformed:
            self.reader.resync()
            raise
        return header, self.reader.read_parts(header, deadline)

    def _check_sizes(self, header: dict) -> None:
        L, sizes, kind = self.limits, header["parts"], header.get("type")
        if kind == "call":
            try:
                check_call_header(header, L)
            except ValueError as e:
                raise protocol.MessageTooLarge(str(e)) from None
            return
        if kind == "result":  # stdout, error, final, value (JSON); UTF-8 takes at most 4 bytes a character
            caps = [4 * L.output_chars, 4 * L.max_error_chars, 4 * L.max_final_chars, 8 * L.max_final_chars]
        else:
            caps = [65536]
        if len(sizes) > len(caps) or any(n > cap + 4096 for n, cap in zip(sizes, caps)):
            raise protocol.MessageTooLarge(f"a '{kind}' message of {sum(sizes)} bytes, over its cap")

    def note_pids(self, msg: dict) -> bool:
        """Takes the live and snapshot pids a message names; False if they are not plain ints. (They
        are only ever used to spare or to kill processes already known to be in this session.)"""
        pid, snap = msg.get("pid"), msg.get("snapshot")
        if type(pid) is not int or not (snap is None or type(snap) is int):
            return False
        self.live_pid, self.snapshot_pid = pid, snap
        return True

    def recover(self, deadline: float) -> dict | None:
        """Kills the live worker and waits for its snapshot to take over: writes a resync line with a
        fresh token and skips everything up to the ``restored`` line that echoes it (module docstring).
        Returns that message (with ``completed``, the cells whose effects the snapshot holds), or None
        when no snapshot answered in time."""
        self.kill_live()
        token = secrets.token_hex(16)
        try:
            self.send({"op": "resync", "token": token}, fresh_line=True, timeout=max(0.0, deadline - time.monotonic()))
            msg = self.reader.scan_for(
                lambda h: h.get("type") == "restored" and h.get("token") == token, deadline, RECOVER_BYTES
            )
        except (protocol.ChannelClosed, protocol.ChannelTimeout, protocol.Malformed, OSError):
            return None
        if type(msg.get("completed")) is not int or not self.note_pids(msg):
            return None
        self.answered()
        return msg

    def answered(self) -> None:
        """After every answer of the worker (greeting, result, restored, added): kill the strays, then let
        the worker fork its next snapshot (it waits for this, so the sweep can never meet that fork)."""
        self.sweep()
        try:
            self.send({"op": "go"}, timeout=5.0)
        except (protocol.ChannelClosed, protocol.ChannelTimeout, OSError):
            pass  # a dead worker: the next exchange finds out

    def sweep(self) -> None:
        """Kills every process of the session but the live worker and its snapshot: all of the cgroup, or
        (without one) every descendant of the live worker, which adopts orphans as a subreaper."""
        keep = {self.live_pid, self.snapshot_pid}
        if self.cgroup is not None:
            pids = self.cgroup.pids()
        elif _session_of(self.live_pid) == self.pgid:
            pids = _descendants(self.live_pid)
        else:
            return
        for pid in pids:
            if pid not in keep:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def session_cpu_seconds(self) -> float | None:
        """CPU time used by every process of the session so far, where a cgroup counts it."""
        return self.cgroup.cpu_seconds() if self.cgroup is not None else None

    def kill_live(self) -> None:
        """SIGKILL the process now running cells, and wait until it is gone; its snapshot takes over. The
        pid comes from the worker, so it is only trusted if it belongs to this worker's session. (A
        process woken by SIGKILL in the middle of a pipe read still takes what is there before it dies:
        nothing may be written for its snapshot until it is dead.)"""
        pid = self.live_pid
        if pid == self.proc.pid or _session_of(pid) == self.pgid:
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                fd = -1
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_gone(pid, fd, time.monotonic() + 5.0)
        else:
            self.kill()

    def kill(self) -> None:
        if self.dead or os.getpid() != self.owner:
            return
        self.dead = True
        self.sock.close()
        for _ in range(2):  # a snapshot may be mid-takeover during the first sweep
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self.cgroup is not None:
            self.cgroup.remove()
        for f in (self.proc.stdin, self.proc.stdout):
            assert f is not None  # both are PIPEs (see __init__)
            try:
                f.close()
            except OSError:
                pass


def _wait_gone(pid: int, pidfd: int, deadline: float) -> None:
    """Until ``pid`` has exited (its pidfd polls readable; without one, its /proc entry says so)."""
    if pidfd >= 0:
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            poller.poll(max(0, int((deadline - time.monotonic()) * 1000)))
        finally:
            os.close(pidfd)
        return
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except OSError:
            return
        time.sleep(0.001)


def _descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` (the children files of /proc, walked down)."""
    out, queue = [], [pid]
    while queue:
        parent = queue.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except (OSError, ValueError):
                continue
            out += kids
            queue += kids
    return out
