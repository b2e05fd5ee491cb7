"""OS-level hardening of a worker process, all unprivileged where Linux allows it (worker side only).

Applied once, after the context is loaded and before any model code runs. Each step is best effort and
reported by name, so the parent (and the tests) can see what this machine supports:
- ``netns``: a private network namespace with no interfaces (via a user namespace when not root);
- ``ipcns``: a private IPC namespace, so SysV/POSIX IPC objects die with the session's last process;
- ``session-uid``: when started as root, run as a uid of this session alone (unused by any account), so
  files only the parent's user can read are closed and the per-uid process cap is per session;
- ``rlimits``: no core dumps, no file growth, few open files, capped address space, and a hard CPU
  limit (``session_cpu_seconds``) that every process of the session inherits;
- ``subreaper``: the worker adopts the orphans of processes it made, so the parent's sweep at each cell
  end finds every stray among its descendants (a snapshot that takes over sets it again);
- ``nproc``: at most ``max_processes`` processes for this session (needs ``session-uid``: the kernel
  counts processes per uid, and a shared uid would let one session starve another's snapshot fork);
- ``not-dumpable``: other processes of the same uid cannot read our memory through /proc;
- ``no-new-privs``: execve can never gain privileges;
- ``landlock``: no file or directory can be opened at all any more, no TCP bind/connect, and (newer
  kernels) no signals to processes outside the sandbox;
- ``seccomp``: sockets, exec, ptrace, signals to other processes, mounts, namespaces (also through
  clone flags), io_uring, file writes, SysV/POSIX IPC, memfd, leaving the process group
  (``setsid``/``setpgid``) and re-parenting a child (``clone`` with ``CLONE_PARENT``, whose children
  would be the parent's, outside the session's kill and reap) fail with EPERM. Nothing can leave the
  kill scope the parent holds.

The parent adds ``cgroup`` (cgroup.py) where it can: all of the session's memory and processes counted
together, whatever the worker does.
"""

from __future__ import annotations

import ctypes
import math
import os
import platform
import resource
import struct

PR_SET_CHILD_SUBREAPER = 36
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_NEWIPC = 0x08000000
CLONE_PARENT = 0x00008000  # the child would be our parent's (the service's): out of reach of kill and reap
NS_CLONE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | CLONE_NEWIPC | CLONE_NEWUSER | 0x20000000 | CLONE_NEWNET
DENIED_CLONE_FLAGS = NS_CLONE_FLAGS | CLONE_PARENT
NOBODY = 65534

_libc = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, arg: int = 0) -> bool:
    return _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) == 0


def _unshare(flags: int) -> bool:
    if os.geteuid() == 0 and _libc.unshare(flags) == 0:
        return True
    return _libc.unshare(CLONE_NEWUSER | flags) == 0


def _drop_root(uid: int) -> bool:
    if os.geteuid() != 0:
        return False
    try:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    except OSError:
        return False
    return os.geteuid() == uid


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _rlimits(memory_mb: int, cpu_seconds: float) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if cpu_seconds > 0:
        hard = math.ceil(cpu_seconds + cpu_used())
        resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
    if memory_mb > 0:
        limit = _vm_bytes() + memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


# landlock ------------------------------------------------------------------------------------------------
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_RESTRICT_SELF = 444, 446  # same numbers on every architecture
LANDLOCK_CREATE_RULESET_VERSION = 1


def _landlock() -> bool:
    """A ruleset with no rules: every file and directory access, TCP bind/connect, and (ABI 6+) signals
    and abstract unix sockets leaving the domain are denied from now on."""
    syscall = _libc.syscall
    syscall.restype = ctypes.c_long
    abi = syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint(LANDLOCK_CREATE_RULESET_VERSION))
    if abi < 1:
        return False
    fs_bits = {1: 13, 2: 14, 3: 15, 4: 15}.get(abi, 16)  # EXECUTE .. MAKE_SYM, REFER, TRUNCATE, IOCTL_DEV
    fields = [(1 << fs_bits) - 1]
    if abi >= 4:
        fields.append(0b11)  # BIND_TCP, CONNECT_TCP
    if abi >= 6:
        fields.append(0b11)  # scoped: ABSTRACT_UNIX_SOCKET, SIGNAL
    attr = ctypes.create_string_buffer(struct.pack(f"{len(fields)}Q", *fields))
    fd = syscall(SYS_LANDLOCK_CREATE_RULESET, attr, ctypes.c_size_t(8 * len(fields)), ctypes.c_uint(0))
    if fd < 0:
        return False
    try:
        return syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(fd), ctypes.c_uint(0)) == 0
    finally:
        os.close(fd)


# seccomp ------------------------------------------------------------------------------------------------
AUDIT_ARCH_X86_64 = 0xC000003E
X86_64_DENY = {  # name: number
    "socket": 41,
    "connect": 42,
    "accept": 43,
    "bind": 49,
    "listen": 50,
    "socketpair": 53,
    "accept4": 288,
    "execve": 59,
    "execveat": 322,
    "ptrace": 101,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "mount": 165,
    "umount2": 166,
    "unshare": 272,
    "setns": 308,
    "bpf": 321,
    "perf_event_open": 298,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "keyctl": 250,
    "add_key": 248,
    "request_key": 249,
    "open_by_handle_at": 304,
    "kexec_load": 246,
    "init_module": 175,
    "finit_module": 313,
    "delete_module": 176,
    "chroot": 161,
    "pivot_root": 155,
    "creat": 85,
    "unlink": 87,
    "unlinkat": 263,
    "rename": 82,
    "renameat": 264,
    "renameat2": 316,
    "mkdir": 83,
    "mkdirat": 258,
    "rmdir": 84,
    "chmod": 90,
    "fchmod": 91,
    "fchmodat": 268,
    "chown": 92,
    "fchown": 93,
    "lchown": 94,
    "fchownat": 260,
    "link": 86,
    "linkat": 265,
    "symlink": 88,
    "symlinkat": 266,
    "truncate": 76,
    "ftruncate": 77,
    "personality": 135,
    # signals to other processes (other sessions' workers share our uid)
    "kill": 62,
    "tkill": 200,
    "tgkill": 234,
    "rt_sigqueueinfo": 129,
    "rt_tgsigqueueinfo": 297,
    "pidfd_send_signal": 424,
    "pidfd_open": 434,
    "pidfd_getfd": 438,
    # leaving the process group the parent kills as one
    "setsid": 112,
    "setpgid": 109,
    # SysV and POSIX IPC (memory outside RLIMIT_AS that outlives a process), anonymous files
    "shmget": 29,
    "shmat": 30,
    "shmctl": 31,
    "shmdt": 67,
    "semget": 64,
    "semop": 65,
    "semctl": 66,
    "semtimedop": 220,
    "msgget": 68,
    "msgsnd": 69,
    "msgrcv": 70,
    "msgctl": 71,
    "mq_open": 240,
    "mq_unlink": 241,
    "mq_timedsend": 242,
    "mq_timedreceive": 243,
    "mq_notify": 244,
    "mq_getsetattr": 245,
    "memfd_create": 319,
    "fallocate": 285,
}
X86_64_CLONE, X86_64_CLONE3 = 56, 435  # clone: no namespace flags; clone3: ENOSYS, so libc uses clone
X86_64_PRLIMIT = 302  # allowed only on ourselves (pid 0)
X86_64_OPEN = {2: 1, 257: 2}  # open(path, flags), openat(dirfd, path, flags): index of the flags arg
OPEN_WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000  # O_WRONLY O_RDWR O_CREAT O_TRUNC O_APPEND
EPERM = 1
ENOSYS = 38
RET_ALLOW, RET_ERRNO, RET_KILL = 0x7FFF0000, 0x00050000 | EPERM, 0x80000000
RET_ENOSYS = 0x00050000 | ENOSYS
LD_ABS, JEQ, JSET, JGE, RET = 0x20, 0x15, 0x45, 0x35, 0x06


def _seccomp_program() -> bytes:
    ins: list[tuple[int, int, int, int]] = [
        (LD_ABS, 0, 0, 4),  # arch
        (JEQ, 1, 0, AUDIT_ARCH_X86_64),
        (RET, 0, 0, RET_KILL),
        (LD_ABS, 0, 0, 0),  # syscall number
        (JGE, 0, 1, 0x40000000),  # x32 ABI aliases
        (RET, 0, 0, RET_ERRNO),
    ]
    for nr in sorted(X86_64_DENY.values()):
        ins += [(JEQ, 0, 1, nr), (RET, 0, 0, RET_ERRNO)]
    for nr, arg in X86_64_OPEN.items():
        ins += [
            (JEQ, 0, 4, nr),
            (LD_ABS, 0, 0, 16 + 8 * arg),
            (JSET, 0, 1, OPEN_WRITE_FLAGS),
            (RET, 0, 0, RET_ERRNO),
            (RET, 0, 0, RET_ALLOW),
        ]
    ins += [(JEQ, 0, 1, X86_64_CLONE3), (RET, 0, 0, RET_ENOSYS)]
    ins += [
        (JEQ, 0, 4, X86_64_CLONE),
        (LD_ABS, 0, 0, 16),
        (JSET, 0, 1, DENIED_CLONE_FLAGS),
        (RET, 0, 0, RET_ERRNO),
        (RET, 0, 0, RET_ALLOW),
    ]
    ins += [
        (JEQ, 0, 4, X86_64_PRLIMIT),
        (LD_ABS, 0, 0, 16),
        (JEQ, 1, 0, 0),
        (RET, 0, 0, RET_ERRNO),
        (RET, 0, 0, RET_ALLOW),
    ]
    ins.append((RET, 0, 0, RET_ALLOW))
    return b"".join(struct.pack("HBBI", *i) for i in ins)


def _seccomp() -> bool:
    if platform.machine() != "x86_64":
        return False
    prog = _seccomp_program()
    buf = ctypes.create_string_buffer(prog, len(prog))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog) // 8, ctypes.addressof(buf))
    return _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0


def cpu_used() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def apply(memory_mb: int, uid: int | None, max_processes: int, cpu_seconds: float = 0.0) -> list[str]:
    """Harden the current process; returns the names of the steps that took effect. ``uid``: the
    session's own uid (used when started as root; None means nobody); ``cpu_seconds``: the hard CPU
    limit of every process of the session (0: none)."""
    done = []
    if _unshare(CLONE_NEWNET):
        done.append("netns")
    if _unshare(CLONE_NEWIPC):
        done.append("ipcns")
    if _drop_root(NOBODY if uid is None else int(uid)):
        done.append("session-uid" if uid is not None else "drop-uid")
    try:
        _rlimits(memory_mb, cpu_seconds)
        done.append("rlimits")
    except (OSError, ValueError):
        pass
    if prctl(PR_SET_CHILD_SUBREAPER, 1):
        done.append("subreaper")
    if "session-uid" in done:
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))
            done.append("nproc")
        except (OSError, ValueError):
            pass
    if prctl(PR_SET_DUMPABLE, 0):  # other same-uid processes cannot read our memory via /proc
        done.append("not-dumpable")
    if prctl(PR_SET_NO_NEW_PRIVS, 1):
        done.append("no-new-privs")
    if "no-new-privs" in done and _landlock():
        done.append("landlock")
    if "no-new-privs" in done and _seccomp():
        done.append("seccomp")
    return done
