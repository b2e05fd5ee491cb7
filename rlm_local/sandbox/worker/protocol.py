"""Framed messages between the parent and a sandbox worker.

Both sides import this file: the parent as ``rlm_local.sandbox.protocol``, the worker as a top-level
module (it runs from a bare interpreter without the package). It therefore imports only the stdlib.

A message is one JSON header line holding small fields only, followed by a binary payload: the UTF-8
bytes of its string parts, whose byte lengths the header lists (``"parts": [n0, n1, ...]``). Text never
travels inside JSON, so:
- reading is linear: the header line is scanned for its newline once per byte (never from the start
  again), the payload is read by length, and the deadline is checked before every read, even while the
  other side floods the pipe;
- the reader knows every size before it reads the bytes, so it can refuse a message by its header
  (too many parts, too many bytes) instead of buffering it; an empty part still counts as a part;
- nothing big is ever parsed as JSON (a hostile header is capped small, and JSON errors, deep nesting
  included, come back as ``None``);
- text is always valid UTF-8 on the wire: lone surrogates become U+FFFD when encoded, and decoding
  replaces invalid bytes, so every consumer (trajectory writers, HTTP clients) can write what arrives.
"""

from __future__ import annotations

import errno
import json
import os
import re
import select
import time
from collections.abc import Sequence

# The functions every REPL session defines; with `context`, `print` and `printed` no other name may take them.
STUB_NAMES = ("llm_query", "llm_query_batched", "rlm_query", "rlm_query_batched", "FINAL", "FINAL_VAR", "SHOW_VARS")
RESERVED_NAMES = frozenset(STUB_NAMES) | {"context", "print", "printed"}
MAX_HEADER_BYTES = 1 << 20  # header lines are small: field names, numbers, a list of part lengths
_SURROGATES = re.compile("[\ud800-\udfff]")


class ChannelClosed(Exception):
    """The other end went away (EOF or broken pipe)."""


class ChannelTimeout(Exception):
    """No complete message arrived before the deadline."""


class Malformed(Exception):
    """What arrived is not a message of the protocol, or not the one expected now."""


class MessageTooLarge(Malformed):
    """A message's header announced (or its line reached) more than the reader accepts."""


def to_utf8(text: str) -> bytes:
    """UTF-8 bytes of ``text`` (an exact str copy of it: a subclass's own methods never run); lone
    surrogates (from surrogateescape'd files, or hostile code) become U+FFFD."""
    if type(text) is not str:
        text = str.__str__(text)  # TypeError for anything that is not a str at all
    try:
        return str.encode(text, "utf-8")
    except UnicodeEncodeError:
        return str.encode(_SURROGATES.sub("\ufffd", text), "utf-8")


def clean_text(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD (what the other side will receive)."""
    return _SURROGATES.sub("\ufffd", text) if _SURROGATES.search(text) else text


def encode(msg: dict, parts: Sequence[str] = ()) -> bytes:
    """One message: its sizes are those of the exact bytes sent, computed here, never asked of the parts."""
    blobs = [to_utf8(p) for p in parts]
    header = dict(msg, parts=[bytes.__len__(b) for b in blobs])
    return json.dumps(header, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n" + b"".join(blobs)


def decode_header(line: bytes) -> dict | None:
    """A header as a dict, or None for anything else (garbage, half a line, hostile nesting)."""
    try:
        msg = json.loads(line)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None
    if not isinstance(msg, dict):
        return None
    parts = msg.get("parts")
    if type(parts) is not list or not all(type(n) is int and n >= 0 for n in parts):
        return None
    return msg


class Reader:
    """Reads framed messages from a raw fd with an optional deadline (poll, not select: a big parent
    process may hold fds above 1024)."""

    def __init__(self, fd: int, max_header: int = MAX_HEADER_BYTES):
        self.fd = fd
        self.max_header = max_header
        self.buf = bytearray()
        self.scanned = 0  # bytes of buf already known to hold no newline
        self.skipping = False  # dropping the rest of a refused message, up to the next newline
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def _fill(self, deadline: float | None) -> None:
        """Appends at least one byte to buf, or raises. The deadline is checked before every read."""
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:  # checked even when data keeps coming: a flood cannot outrun the deadline
                    raise ChannelTimeout()
                if not self.poller.poll(int(left * 1000) + 1):
                    continue
            try:
                chunk = os.read(self.fd, 1 << 20)
            except InterruptedError:
                continue
            except BlockingIOError:
                continue
            except OSError as e:
                raise ChannelClosed(str(e)) from None
            if not chunk:
                raise ChannelClosed("end of stream")
            self.buf += chunk
            return

    def pending(self) -> bool:
        """True if bytes are buffered or waiting on the fd (a message may be there), without blocking."""
        return bool(self.buf) or bool(self.poller.poll(0))

    def read_header(self, deadline: float | None = None) -> dict | None:
        """Next header; blank lines (a restored worker starts on a fresh line) are skipped. Returns None
        for a line that is not a valid header (the caller treats the sender as broken)."""
        while self.skipping:
            i = self.buf.find(b"\n")
            if i >= 0:
                del self.buf[: i + 1]
                self.skipping = False
            else:
                self.buf.clear()
                self._fill(deadline)
        while True:
            i = self.buf.find(b"\n", self.scanned)
            while i < 0:
                self.scanned = len(self.buf)
                if self.scanned > self.max_header:
                    raise MessageTooLarge(f"a message header over {self.max_header} bytes")
                self._fill(deadline)
                i = self.buf.find(b"\n", self.scanned)
            if i > self.max_header:  # the whole line may have come in one read
                raise MessageTooLarge(f"a message header over {self.max_header} bytes")
            line = bytes(self.buf[:i])
            del self.buf[: i + 1]
            self.scanned = 0
            if line.strip():
                return decode_header(line)

    def scan_for(self, match, deadline: float | None = None, max_bytes: int = 1 << 40) -> dict:
        """Skips everything (garbage, half messages, payloads, other headers) up to a header line for which
        ``match(header)`` is true and returns it; its parts are not read (such headers have none). Lines
        are found by their newline alone, never by a size a header announced, so no lie about sizes can
        hide the line. Raises ChannelTimeout, ChannelClosed, or MessageTooLarge past ``max_bytes``."""
        self.skipping = False
        skipped = 0
        while True:
            if skipped > max_bytes:
                raise MessageTooLarge(f"no expected message in {skipped} bytes")
            i = self.buf.find(b"\n", self.scanned)
            if i < 0:
                if len(self.buf) > 4096:  # too long for a header we look for: keep only a marker that
                    skipped += len(self.buf)  # the line goes on, so its end is not taken for a fresh line
                    self.buf[:] = b"x"
                self.scanned = len(self.buf)
                self._fill(deadline)
                continue
            line = bytes(self.buf[:i])
            del self.buf[: i + 1]
            self.scanned = 0
            skipped += i + 1
            header = decode_header(line) if 0 < len(line) <= 4096 else None
            if header is not None and match(header):
                return header

    def resync(self) -> None:
        """Drops a refused message: everything up to the next newline (a restored worker greets on a
        fresh line). What is already buffered after that newline is kept."""
        self.scanned = 0
        self.skipping = True

    def read_parts(self, header: dict, deadline: float | None = None) -> list[str]:
        """The payload announced by ``header`` (check its ``parts`` against your caps first)."""
        sizes = header.get("parts", [])
        total = sum(sizes)
        while len(self.buf) < total:
            self._fill(deadline)
        data = bytes(self.buf[:total])
        del self.buf[:total]
        out, pos = [], 0
        for n in sizes:
            out.append(data[pos : pos + n].decode("utf-8", "replace"))
            pos += n
        return out


def call_cost(prompts: list[str], contexts: list | None) -> tuple[int, int]:
    """(items, characters) of a sub-call: every prompt and every context item counts as one item, empty
    ones included; dict contexts count their keys' characters too. Both sides use this one rule."""
    items, chars = len(prompts), sum(map(len, prompts))
    for context in contexts or ():
        if isinstance(context, str):
            items, chars = items + 1, chars + len(context)
        elif isinstance(context, dict):
            items += len(context)
            chars += sum(len(k) + len(v) for k, v in context.items())
        elif isinstance(context, (list, tuple)):
            items, chars = items + len(context), chars + sum(map(len, context))
    return items, chars


def check_call_size(
    prompts: list[str],
    contexts: list | None,
    max_prompts: int,
    max_prompt_chars: int,
    max_call_chars: int,
    max_items: int,
) -> None:
    """The size rules of one sub-call, the same on both sides."""
    if len(prompts) > max_prompts:
        raise ValueError(
            f"too many prompts in one call: {len(prompts)} (limit {max_prompts}); split them into smaller batches"
        )
    longest = max(map(len, prompts), default=0)
    if longest > max_prompt_chars:
        raise ValueError(f"prompt too long: {longest} characters (limit {max_prompt_chars}); send a smaller chunk")
    items, chars = call_cost(prompts, contexts)
    if items > max_items:
        raise ValueError(
            f"sub-call with too many items: {items} prompts and context items "
            f"(limit {max_items}, empty ones included); join small items first"
        )
    if chars > max_call_chars:
        raise ValueError(f"sub-call too large: {chars} characters of prompt and context (limit {max_call_chars})")


def _context_parts(context) -> tuple[list, list[str]]:
    if context is None:
        return ["none", 0], []
    if isinstance(context, str):
        return ["str", 1], [context]
    if isinstance(context, dict):
        return ["dict", 2 * len(context)], [x for kv in context.items() for x in kv]
    return ["list", len(context)], list(context)


def call_parts(prompts: list[str], contexts: list | None) -> tuple[dict, list[str]]:
    """Header fields and parts of a sub-call: the prompts, then each prompt's context (``rlm`` calls; a
    dict as key, value pairs). ``contexts`` is None for ``llm`` calls, else one entry per prompt."""
    if contexts is None:
        return {"prompts": len(prompts), "contexts": None}, list(prompts)
    shapes, parts = [], list(prompts)
    for context in contexts:
        shape, items = _context_parts(context)
        shapes.append(shape)
        parts += items
    return {"prompts": len(prompts), "contexts": shapes}, parts


def split_call(header: dict, parts: list[str]) -> tuple[list[str], list | None]:
    """Inverse of call_parts; raises ValueError on a header that does not match its parts."""
    n, shapes = header.get("prompts"), header.get("contexts")
    if type(n) is not int or not 0 <= n <= len(parts):
        raise ValueError("malformed sub-call")
    prompts, pos = parts[:n], n
    if shapes is None:
        if pos != len(parts):
            raise ValueError("malformed sub-call")
        return prompts, None
    if not isinstance(shapes, list) or len(shapes) != n:
        raise ValueError("malformed sub-call")
    contexts: list = []
    for shape in shapes:
        if not (isinstance(shape, list) and len(shape) == 2 and type(shape[1]) is int and shape[1] >= 0):
            raise ValueError("malformed sub-call")
        kind, count = shape
        items = parts[pos : pos + count]
        pos += count
        if len(items) != count or ((kind, count) not in (("none", 0), ("str", 1)) and kind not in ("list", "dict")):
            raise ValueError("malformed sub-call")
        if kind == "dict" and count % 2:
            raise ValueError("malformed sub-call")
        contexts.append(
            None
            if kind == "none"
            else items[0]
            if kind == "str"
            else dict(zip(items[::2], items[1::2]))
            if kind == "dict"
            else items
        )
    if pos != len(parts):
        raise ValueError("malformed sub-call")
    return prompts, contexts


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
