"""Starting, reading and killing a sandbox worker process (parent side).

Kill scope: the worker leads its own process group and, where the machine allows, its own cgroup
(cgroup.py). Its seccomp filter forbids ``setsid``/``setpgid``, so no process it makes can leave the
group, and the cgroup holds every process whatever happens; ``kill()`` sweeps both.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from .cgroup import SessionCgroup
from .limits import Limits, SandboxError, check_call_header
from .worker import protocol

WORKER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker", "main.py")
# The worker's whole environment. The glibc tunable puts malloc'd memory on transparent huge pages, which
# makes the per-cell snapshot fork of a session holding 1 GB ~30x cheaper (page tables are copied per page).
CLEAN_ENV = {"LC_ALL": "C.UTF-8", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
SESSION_UIDS = (0x5A000000, 0x5AFFFFFF)  # a uid per session, in a range no account uses
MEMORY_SLACK = 64 << 20  # cgroup: the snapshot's and the interpreter's own pages on top of memory_mb


def _site_dir() -> str:
    spec = importlib.util.find_spec("RestrictedPython")
    if spec is None or spec.origin is None:
        raise SandboxError("RestrictedPython is not installed")
    return os.path.dirname(os.path.dirname(spec.origin))


def encode_context(context) -> tuple[str, bytes]:
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

    def __init__(self, limits: Limits, cgroup: SessionCgroup | None, fd: int, debug: bool):
        self.limits = limits
        self.cgroup = cgroup
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", WORKER_PATH, _site_dir()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if debug else subprocess.DEVNULL,
            env=CLEAN_ENV,
            cwd="/",
            close_fds=True,
            pass_fds=(fd,) if fd >= 0 else (),
            start_new_session=True,
        )
        self.pgid = self.proc.pid  # start_new_session: the worker leads its own session and group
        self.live_pid = self.proc.pid
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both are PIPEs
        self.out_fd = self.proc.stdin.fileno()
        os.set_blocking(self.out_fd, False)
        self.reader = protocol.Reader(self.proc.stdout.fileno())
        self.hardening: list[str] = []
        self.dead = False
        self.owner = os.getpid()  # a forked copy of the parent must not kill our worker at its exit
        if cgroup is not None:
            try:  # the worker waits for init before running anything, so it cannot race this
                cgroup.add(self.proc.pid)
            except OSError:
                cgroup.remove()
                self.cgroup = None

    @classmethod
    def start(
        cls,
        context,
        limits: Limits,
        host_dir: str,
        tools: tuple[list[str], dict] = ([], {}),
        grant_real_os: bool = False,
        prelude: str | None = None,
    ) -> Worker:
        """Starts a worker, hands it the context (and the prelude, which it runs before greeting), and
        waits for its greeting (bounded by start_seconds). A prelude that fails raises SandboxError."""
        t0 = time.monotonic()
        kind, payload = encode_context(context)
        fd, path = context_file(payload)
        del payload
        worker = None
        try:
            cgroup = SessionCgroup.create(int(limits.max_processes))
            worker = cls(limits, cgroup, fd if path is None else -1, bool(os.environ.get("RLM_SANDBOX_DEBUG")))
            names = (
                "output_chars",
                "memory_mb",
                "max_prompts_per_call",
                "max_prompt_chars",
                "max_call_chars",
                "max_call_items",
                "max_final_chars",
                "max_error_chars",
                "max_processes",
            )
            worker.send(
                {
                    "op": "init",
                    "context_fd": fd if path is None else None,
                    "context_path": path,
                    "context_kind": kind,
                    "limits": {n: int(getattr(limits, n)) for n in names},
                    "uid": secrets.randbelow(SESSION_UIDS[1] - SESSION_UIDS[0]) + SESSION_UIDS[0],
                    "host_dir": host_dir,
                    "grant_real_os": grant_real_os,
                    "tool_functions": tools[0],
                    "prelude": prelude is not None,
                    "prelude_cpu_seconds": float(limits.cpu_seconds),
                },
                [json.dumps(tools[1], ensure_ascii=False), prelude or ""],
            )
            msg, parts = worker.read(t0 + limits.start_seconds)
            if msg.get("type") == "failed":
                raise SandboxError(f"the sandbox prelude failed: {(parts[0] if parts else '')[:2000]}")
            if msg.get("type") != "ready" or not isinstance(msg.get("pid"), int):
                raise SandboxError("sandbox worker sent an unexpected greeting")
            worker.live_pid = msg["pid"]
            worker.hardening = [str(h) for h in msg.get("hardening", [])][:32]
            if worker.cgroup is not None:
                try:
                    worker.cgroup.limit_memory(int(limits.memory_mb) * (1 << 20) + MEMORY_SLACK)
                    worker.hardening.append("cgroup")
                except (OSError, ValueError):
                    pass
            return worker
        except (protocol.ChannelClosed, protocol.ChannelTimeout, protocol.MessageTooLarge, OSError) as e:
            if worker is not None:
                worker.kill()
            raise SandboxError(f"sandbox worker failed to start: {type(e).__name__}: {e}") from None
        except BaseException:
            if worker is not None:
                worker.kill()
            raise
        finally:
            if path is not None:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            else:
                os.close(fd)

    def send(self, msg: dict, parts: Sequence[str] = (), timeout: float = 30.0) -> None:
        protocol.write_all(self.out_fd, protocol.encode(msg, parts), time.monotonic() + timeout)

    def read(self, deadline: float | None) -> tuple[dict, list[str]]:
        """Next message and its parts, every size checked against the limits before it is read.
        Raises ChannelClosed for garbage, MessageTooLarge for a message over its cap."""
        try:
            header = self.reader.read_header(deadline)
            if header is None:
                raise protocol.ChannelClosed("the sandbox worker sent a malformed message")
            self._check_sizes(header)
        except protocol.MessageTooLarge:
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
        if self.cgroup is not None:
            self.cgroup.remove()
        for f in (self.proc.stdin, self.proc.stdout):
            assert f is not None  # both are PIPEs (see __init__)
            try:
                f.close()
            except OSError:
                pass
