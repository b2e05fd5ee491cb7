"""Reading documents into a context: the one extractor behind the CLI's ``--context`` (a file, a directory,
stdin) and the service's uploads (bytes with a file name).

What becomes text, by content first and name second:
- a PDF (``%PDF-`` or ``.pdf``; the ``pdf`` extra): its pages' text under ``--- page N ---`` headers;
- a zip of a directory (``PK`` and ``.zip`` or no suffix), read in memory and never unpacked to disk, and a
  directory on disk: their text files, sorted, each under a ``=== FILE: name ===`` header; binary,
  unreadable and hidden members (``.git``, ``__MACOSX``) are skipped, nested zips too;
- anything else is text: UTF-8, UTF-16 or UTF-32 (with a byte-order mark, or UTF-16 recognised by its
  zero bytes), else cp1252; a NUL byte otherwise means a binary file, which is refused.

Caps (``Caps``; the CLI reads without a character cap, the service passes its configuration): the
characters a document may become (checked while a PDF is read, so a small PDF that expands to millions of
characters stops at the cap), the bytes a zip may unpack to, and its number of members. Over a cap is
:class:`DocumentTooLarge`; every other refusal is :class:`DocumentError`, one line naming the document.
"""

from __future__ import annotations

import codecs
import io
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DocumentError, DocumentTooLarge

# Text files larger than this are still read (RLMs are for huge inputs); the cap only stops a directory
# walk from swallowing a disk image or a database by accident.
MAX_FILE_BYTES = 2 * 1024**3
_SNIFF_BYTES = 8192
_BOMS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_OTHER_ZIP_FORMATS = {".docx", ".xlsx", ".pptx", ".odt", ".ods", ".odp", ".jar", ".epub", ".apk", ".whl"}


@dataclass(frozen=True)
class Caps:
    """Limits on one document. ``None``: no limit (the CLI's characters)."""

    max_chars: int | None = None  # characters of extracted text
    max_unpacked_bytes: int | None = None  # a zip's members in all
    max_members: int = 10_000  # files in a zip
    max_seconds: float | None = None  # CPU seconds reading one PDF may take (a small PDF can draw a lot)


def read_context(path: str, caps: Caps = Caps()) -> str:
    """Read ``path`` ('-' for stdin) into one string: a file as :func:`extract` reads it, a directory as
    its text files concatenated, each under a '=== FILE: name ===' header, in sorted order."""
    if path == "-":
        text = extract("standard input", sys.stdin.buffer.read(), caps, text_only=True)
    else:
        p = Path(path).expanduser()
        if not p.exists():
            raise DocumentError(f"no such file or directory: {path}")
        text = _read_dir(p, caps) if p.is_dir() else extract(str(p), _read_file(p), caps)
    if not text.strip():
        raise DocumentError(f"the context from {path if path != '-' else 'standard input'} is empty")
    return text


def extract(name: str, data: bytes, caps: Caps = Caps(), *, text_only: bool = False, archives: bool = True) -> str:
    """The text of one document given as bytes (an upload, a file's contents); ``name`` is its file name
    (its suffix decides where the content does not). Empty text is refused. ``archives=False``: a zip is
    refused (the members of a zip or a directory: archives inside are not unpacked)."""
    suffix = Path(name).suffix.lower()
    if not text_only and (data[:5] == b"%PDF-" or suffix == ".pdf"):
        text = _pdf(data, name, caps)
    elif not text_only and (data[:4] == b"PK\x03\x04" or suffix == ".zip"):
        if suffix in _OTHER_ZIP_FORMATS or not archives:
            raise DocumentError(f"{name}: {suffix} files are not supported (give text, markdown, a PDF or a zip)")
        text = _zip(data, name, caps)
    else:
        text = decode_text(data, name)
    if caps.max_chars is not None and len(text) > caps.max_chars:
        raise DocumentTooLarge(f"{name} is {len(text):,} characters of text; the limit is {caps.max_chars:,}")
    if not text.strip():
        raise DocumentError(f"{name} is empty")
    return text


def decode_text(data: bytes, name: str) -> str:
    """Bytes as text: a byte-order mark's encoding, UTF-16 without one, UTF-8, else cp1252."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return _strict(data[len(bom) :], encoding, name)
    if utf16 := _bomless_utf16(data[:_SNIFF_BYTES]):
        return _strict(data, utf16, name)
    if b"\x00" in data[:_SNIFF_BYTES]:
        raise DocumentError(f"{name} looks like a binary file, not text (give a text file, a PDF or a directory)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # Old documents are often Latin-1 / cp1252; a strict decode would reject them for one byte.
        return _strict(data, "cp1252", name, "UTF-8 or cp1252")


def _bomless_utf16(sample: bytes) -> str | None:
    """UTF-16 without a byte-order mark: mostly-ASCII text has a zero in every other byte, on one side."""
    pairs = len(sample) // 2
    if pairs < 2:
        return None
    even, odd = sample[0 : 2 * pairs : 2].count(0), sample[1 : 2 * pairs : 2].count(0)
    if odd >= 0.4 * pairs and even == 0:
        return "utf-16-le"
    if even >= 0.4 * pairs and odd == 0:
        return "utf-16-be"
    return None


def _strict(data: bytes, encoding: str, name: str, what: str | None = None) -> str:
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        raise DocumentError(f"{name} is not valid {what or encoding} text") from None
    if "\x00" in text[:_SNIFF_BYTES]:
        raise DocumentError(f"{name} looks like a binary file, not text")
    return text


def _read_file(p: Path) -> bytes:
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise DocumentError(f"{p} is {size:,} bytes; the limit for one file is {MAX_FILE_BYTES:,}")
        return p.read_bytes()
    except PermissionError:
        raise DocumentError(f"cannot read {p}: permission denied") from None
    except IsADirectoryError:
        raise DocumentError(f"cannot read {p}: it is a directory") from None
    except OSError as exc:
        raise DocumentError(f"cannot read {p}: {exc.strerror or exc}") from None


class _Budget:
    """Characters extracted so far against a cap, and the CPU time of this thread against another, so a
    PDF stops while it is being read (pypdf calls the visitors for every drawing operator)."""

    def __init__(self, name: str, cap: int | None, seconds: float | None = None) -> None:
        self.name, self.cap, self.used = name, cap, 0
        self.seconds, self.started = seconds, time.thread_time()

    def add(self, n: int) -> None:
        self.used += n
        if self.cap is not None and self.used > self.cap:
            raise DocumentTooLarge(f"{self.name} extracts to more than {self.cap:,} characters of text")

    def text(self, text: Any, *_: Any) -> None:
        self.add(len(text) if isinstance(text, str) else 0)

    def operator(self, *_: Any) -> None:
        if self.seconds is not None and time.thread_time() - self.started > self.seconds:
            raise DocumentTooLarge(f"{self.name} takes more than {self.seconds:g} s of CPU to read")


def _pdf(data: bytes, name: str, caps: Caps) -> str:
    try:
        from pypdf import PdfReader
    except ImportError:
        raise DocumentError(f"{name} is a PDF: install PDF support with pip install 'rlm-local[pdf]'") from None
    budget = _Budget(name, caps.max_chars, caps.max_seconds)
    pages = []
    try:
        for i, page in enumerate(PdfReader(io.BytesIO(data)).pages):
            text = page.extract_text(visitor_text=budget.text, visitor_operand_before=budget.operator) or ""
            budget.add(len(f"\n\n--- page {i + 1} ---\n"))
            pages.append(text)
    except DocumentTooLarge:
        raise
    except Exception as exc:  # pypdf raises many types on damaged input
        raise DocumentError(f"cannot read PDF {name}: {type(exc).__name__}: {exc}") from None
    if not any(t.strip() for t in pages):
        raise DocumentError(f"{name} has no extractable text (a scanned PDF needs OCR first): it is empty")
    return "\n\n".join(f"--- page {i + 1} ---\n{t}" for i, t in enumerate(pages))


def _zip(data: bytes, name: str, caps: Caps) -> str:
    """Text files of a zipped directory, read in memory (never extracted to disk), each under a header."""
    budget = _Budget(name, caps.max_chars)
    parts = []
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = sorted((m for m in archive.infolist() if not m.is_dir()), key=lambda m: m.filename)
        if len(members) > caps.max_members:
            raise DocumentTooLarge(f"{name} holds {len(members):,} files; the limit is {caps.max_members:,}")
        unpacked = sum(m.file_size for m in members)
        if caps.max_unpacked_bytes is not None and unpacked > caps.max_unpacked_bytes:
            raise DocumentTooLarge(f"{name} unpacks to more than {caps.max_unpacked_bytes:,} bytes")
        for m in members:
            rel = m.filename
            if any(p.startswith(".") or p == "__MACOSX" for p in rel.split("/")):
                continue
            try:
                text = extract(rel, archive.read(m), Caps(budget.cap, max_seconds=caps.max_seconds), archives=False)
            except DocumentTooLarge:
                raise DocumentTooLarge(f"{name} extracts to more than {budget.cap:,} characters of text") from None
            except DocumentError:
                continue  # binary and unreadable members are skipped, as for a directory on disk
            part = f"=== FILE: {rel} ===\n{text}"
            budget.add(len(part) + 2)
            parts.append(part)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, RuntimeError) as exc:
        raise DocumentError(f"cannot read zip {name}: {exc}") from None
    if not parts:
        raise DocumentError(f"{name} holds no readable text files")
    return "\n\n".join(parts)


def _read_dir(root: Path, caps: Caps) -> str:
    budget = _Budget(str(root), caps.max_chars)
    parts: list[str] = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue  # hidden files and folders (.git, .venv) are never what the user meant
        try:
            text = extract(str(p), _read_file(p), Caps(budget.cap), archives=False)
        except DocumentTooLarge:
            raise
        except DocumentError:
            continue  # binary and unreadable files in a directory are skipped, not fatal
        part = f"=== FILE: {rel.as_posix()} ===\n{text}"
        budget.add(len(part) + 2)
        parts.append(part)
    if not parts:
        raise DocumentError(f"the directory {root} holds no readable text files")
    return "\n\n".join(parts)
