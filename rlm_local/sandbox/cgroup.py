"""A cgroup per sandbox session, where the machine lets us make one (parent side).

It counts everything the session creates together, whatever the worker does after an escape: all of its
processes against ``pids.max`` (so one session cannot use up a process budget others need for their
snapshot forks) and all of their memory against one limit (anonymous memory of every process, and
shared memory or files in memory too, which ``RLIMIT_AS`` does not see). Closing the session kills every
process in the cgroup, so nothing outlives it even if it left the process group.

Where the ``cpu`` controller is there too, the session gets a CPU quota (``Limits.cpu_cores``: all of its
processes together use at most that many cores) and the parent reads the CPU time all of them have used
(checked against ``Limits.session_cpu_seconds`` after each cell).

cgroup v2 is used when the session's own cgroup can delegate ``memory`` and ``pids`` to a child; else
cgroup v1's ``memory`` and ``pids`` hierarchies, and ``cpu``/``cpuacct`` where mounted (as on this
project's CI machines, as root). Unprivileged users of a systemd desktop usually have neither without
delegation: the sandbox then reports no ``cgroup`` step and relies on seccomp (no ``setsid``/``setpgid``/
``CLONE_PARENT``), rlimits and the parent's sweep of the worker's descendants.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid

log = logging.getLogger(__name__)
ROOT = "/sys/fs/cgroup"


def _own_path(controller: str) -> str | None:
    """This process's cgroup path in the v1 hierarchy of ``controller`` ('' for v2)."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, names, path = line.rstrip("\n").split(":", 2)
                if (controller in names.split(",")) if controller else (names == "" and line.startswith("0:")):
                    return path
    except OSError:
        return None
    return None


def _sweep(parent: str) -> None:
    """Removes session cgroups left empty by a parent that was killed before it could clean up. rmdir
    of a cgroup that still has processes fails, and young ones are left alone (one may be between its
    mkdir and its first process)."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith("rlm-sandbox-")]
    except OSError:
        return
    for name in names:
        path = os.path.join(parent, name)
        try:
            if time.time() - os.stat(path).st_mtime > 60:
                os.rmdir(path)
        except OSError:
            pass


def _v1_dir(controller: str, name: str) -> str:
    own = _own_path(controller)
    if own is None:
        raise OSError(f"no v1 {controller} hierarchy")
    parent = os.path.join(ROOT, controller, own.lstrip("/"))
    _sweep(parent)
    path = os.path.join(parent, name)
    os.mkdir(path)
    return path


def _v1_optional(controller: str, name: str, dirs: list[str]) -> str:
    """A v1 directory for an optional controller ('' where it is not mounted); recorded in ``dirs``
    (for removal) unless it is one already there (controllers mounted together share a directory)."""
    try:
        path = _v1_dir(controller, name)
    except FileExistsError:
        own = _own_path(controller) or ""
        return os.path.join(ROOT, controller, own.lstrip("/"), name)
    except OSError:
        return ""
    dirs.append(path)
    return path


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class SessionCgroup:
    """One child cgroup (a directory per controller). ``create`` returns None where none can be made."""

    PERIOD_US = 100_000

    def __init__(self, dirs: list[str], memory_file: str, usage_file: str, cpu: tuple[str, str, str] = ("", "", "")):
        self.dirs = dirs  # the pids controller's first: its cgroup.procs lists the session's processes
        self.memory_file = memory_file
        self.usage_file = usage_file
        self.cpu_dir, self.cpu_max_file, self.cpu_usage_file = cpu  # v1: cpu dir + cpuacct file; v2: cpu.max
        self._fds: dict[str, int] = {}

    @classmethod
    def create(cls, max_processes: int) -> SessionCgroup | None:
        name = f"rlm-sandbox-{uuid.uuid4().hex[:12]}"
        for make in (cls._v2, cls._v1):
            try:
                made = make(name, max_processes)
            except OSError as e:
                log.debug("cgroup %s unavailable: %s", make.__name__, e)
                continue
            if made is not None:
                return made
        return None

    @classmethod
    def _v2(cls, name: str, max_processes: int) -> SessionCgroup | None:
        own = _own_path("")
        base = os.path.join(ROOT, (own or "").lstrip("/"))
        if own is None or not os.path.exists(os.path.join(base, "cgroup.controllers")):
            return None
        with open(os.path.join(base, "cgroup.subtree_control")) as f:
            enabled = f.read().split()
        if not {"memory", "pids"} <= set(enabled):
            return None
        _sweep(base)
        path = os.path.join(base, name)
        os.mkdir(path)
        try:
            _write(os.path.join(path, "pids.max"), str(max_processes))
        except OSError:
            os.rmdir(path)
            raise
        cpu = (path, os.path.join(path, "cpu.max") if "cpu" in enabled else "", os.path.join(path, "cpu.stat"))
        return cls([path], os.path.join(path, "memory.max"), os.path.join(path, "memory.current"), cpu)

    @classmethod
    def _v1(cls, name: str, max_processes: int) -> SessionCgroup | None:
        dirs: list[str] = []
        try:
            for controller in ("pids", "memory"):
                dirs.append(_v1_dir(controller, name))
            _write(os.path.join(dirs[0], "pids.max"), str(max_processes))
        except OSError:
            cls(dirs, "", "").remove()
            raise
        cpu_dir, acct_dir = _v1_optional("cpu", name, dirs), _v1_optional("cpuacct", name, dirs)
        cpu = (
            cpu_dir,
            os.path.join(cpu_dir, "cpu.cfs_quota_us") if cpu_dir else "",
            os.path.join(acct_dir, "cpuacct.usage") if acct_dir else "",
        )
        return cls(
            dirs, os.path.join(dirs[1], "memory.limit_in_bytes"), os.path.join(dirs[1], "memory.usage_in_bytes"), cpu
        )

    def limit_processes(self, max_processes: int) -> None:
        _write(os.path.join(self.dirs[0], "pids.max"), str(max_processes))

    def limit_cpu(self, cores: float) -> bool:
        """Caps the session at ``cores`` CPUs (all its processes together); False where there is no cpu
        controller or ``cores`` is not positive."""
        if not self.cpu_max_file or cores <= 0:
            return False
        quota = max(1000, int(cores * self.PERIOD_US))
        try:
            if self.cpu_max_file.endswith("cpu.max"):
                _write(self.cpu_max_file, f"{quota} {self.PERIOD_US}")
            else:
                _write(os.path.join(self.cpu_dir, "cpu.cfs_period_us"), str(self.PERIOD_US))
                _write(self.cpu_max_file, str(quota))
        except OSError:
            return False
        return True

    def _read(self, path: str) -> str:
        """A one-value cgroup file's content, read through a descriptor kept open (read after every cell)."""
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return os.pread(fd, 1 << 16, 0).decode()

    def cpu_seconds(self) -> float | None:
        """CPU time the session's processes have used (those that ended included), or None."""
        try:
            text = self._read(self.cpu_usage_file) if self.cpu_usage_file else ""
        except OSError:
            return None
        if not text:
            return None
        if self.cpu_usage_file.endswith("cpu.stat"):
            for line in text.splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
            return None
        return int(text) / 1e9

    def add(self, pid: int) -> None:
        """Moves ``pid`` in (before it runs anything untrusted: its children inherit the cgroup)."""
        for d in self.dirs:
            _write(os.path.join(d, "cgroup.procs"), str(pid))

    def limit_memory(self, extra_bytes: int) -> None:
        """Caps the session at what it uses now plus ``extra_bytes``."""
        with open(self.usage_file) as f:
            used = int(f.read())
        _write(self.memory_file, str(used + extra_bytes))

    def pids(self) -> list[int]:
        try:  # opened afresh each time: v1 builds the list when the file is opened
            with open(os.path.join(self.dirs[0], "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except (OSError, IndexError):
            return []

    def kill_all(self) -> None:
        for _ in range(100):  # a fork racing the sweep is caught by the next one
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.002)

    def remove(self) -> None:
        """Kills what is left and removes the directories (retrying while dead processes are reaped)."""
        if self.dirs:
            self.kill_all()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        for d in reversed(self.dirs):
            for _ in range(200):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.005)
            else:
                log.warning("could not remove sandbox cgroup %s", d)
        self.dirs = []
