"""JSON-lines messages between the parent and a sandbox worker.

Both sides import this file: the parent as ``rlm_local.sandbox.protocol``, the worker as a top-level
module (it runs from a bare interpreter without the package). It therefore imports only the stdlib.

The parent never trusts what it reads: lines are size-capped and anything that is not a JSON object is
reported as ``None`` so the caller can treat it as garbage (a worker killed mid-write leaves half a line).
"""
from __future__ import annotations

import errno
import json
import os
import select
import time

MAX_LINE_BYTES = 256 * 1024 * 1024  # default cap; anything beyond is a broken or hostile sender


class ChannelClosed(Exception):
    """The other end went away (EOF or broken pipe)."""


class ChannelTimeout(Exception):
    """No complete message arrived before the deadline."""


def encode(msg: dict) -> bytes:
    return json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass") + b"\n"


def decode(line: bytes) -> dict | None:
    try:
        msg = json.loads(line.decode("utf-8", "surrogatepass"))
    except (ValueError, UnicodeDecodeError):
        return None
    return msg if isinstance(msg, dict) else None


class LineReader:
    """Reads newline-terminated messages from a raw fd, with an optional deadline (poll, not select:
    a big parent process may hold fds above 1024)."""

    def __init__(self, fd: int, max_line: int = MAX_LINE_BYTES):
        self.fd = fd
        self.max_line = max_line
        self.buf = bytearray()
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def read_line(self, deadline: float | None = None) -> bytes:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 1]
                return line
            if len(self.buf) > self.max_line:
                raise ChannelClosed("message too large")
            if deadline is not None:
                left = deadline - time.monotonic()
                if not self.poller.poll(int(left * 1000) + 1 if left > 0 else 0):
                    if left <= 0:
                        raise ChannelTimeout()
                    continue
            try:
                chunk = os.read(self.fd, 1 << 20)
            except InterruptedError:
                continue
            except OSError as e:
                raise ChannelClosed(str(e)) from None
            if not chunk:
                raise ChannelClosed("end of stream")
            self.buf += chunk

    def read(self, deadline: float | None = None) -> dict | None:
        """Next message; empty lines (a restored worker starts on a fresh line) are skipped."""
        while True:
            line = self.read_line(deadline)
            if line.strip():
                return decode(line)


def write_all(fd: int, data: bytes, deadline: float | None = None) -> None:
    """Write everything; with a deadline the fd must be non-blocking (the parent side) so that a worker
    that stops reading cannot hang the parent."""
    view = memoryview(data)
    poller = None
    while view:
        try:
            n = os.write(fd, view)
            view = view[n:]
        except BlockingIOError:
            if deadline is None:
                raise
            if poller is None:
                poller = select.poll()
                poller.register(fd, select.POLLOUT)
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChannelTimeout() from None
            poller.poll(max(1, int(left * 1000)))
        except InterruptedError:
            continue
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.EBADF):
                raise ChannelClosed(str(e)) from None
            raise
