"""Reading user input into a context: a text file, a PDF, a directory of text files, or stdin."""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import DocumentError

# Text files larger than this are still read (RLMs are for huge inputs); the cap only stops a directory
# walk from swallowing a disk image or a database by accident.
MAX_FILE_BYTES = 2 * 1024**3
_SNIFF_BYTES = 8192


def read_context(path: str) -> str:
    """Read ``path`` ('-' for stdin) into one string. Directories become their text files concatenated,
    each under a '=== FILE: name ===' header, in sorted order; binary files in a directory are skipped."""
    if path == "-":
        data = sys.stdin.buffer.read()
        text = _decode(data, "standard input")
    else:
        p = Path(path).expanduser()
        if not p.exists():
            raise DocumentError(f"no such file or directory: {path}")
        text = _read_dir(p) if p.is_dir() else _read_file(p)
    if not text.strip():
        raise DocumentError(f"the context from {path if path != '-' else 'standard input'} is empty")
    return text


def _read_file(p: Path) -> str:
    if p.suffix.lower() == ".pdf":
        return _read_pdf(p)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise DocumentError(f"{p} is {size:,} bytes; the limit for one file is {MAX_FILE_BYTES:,}")
        data = p.read_bytes()
    except PermissionError:
        raise DocumentError(f"cannot read {p}: permission denied") from None
    except IsADirectoryError:
        raise DocumentError(f"cannot read {p}: it is a directory") from None
    except OSError as exc:
        raise DocumentError(f"cannot read {p}: {exc.strerror or exc}") from None
    return _decode(data, str(p))


def _decode(data: bytes, name: str) -> str:
    if b"\x00" in data[:_SNIFF_BYTES]:
        raise DocumentError(f"{name} looks like a binary file, not text (give a text file, a PDF or a directory)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # Old documents are often Latin-1 / cp1252; a strict decode would reject them for one byte.
        try:
            return data.decode("cp1252")
        except UnicodeDecodeError:
            raise DocumentError(f"{name} is not valid UTF-8 or cp1252 text") from None


def _read_pdf(p: Path) -> str:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise DocumentError(f"{p} is a PDF: install PDF support with pip install 'rlm-local[pdf]'") from None
    try:
        reader = PdfReader(str(p))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, OSError, ValueError) as exc:
        raise DocumentError(f"cannot read PDF {p}: {exc}") from None
    if not any(t.strip() for t in pages):
        raise DocumentError(f"{p} has no extractable text (a scanned PDF needs OCR first); the context is empty")
    return "\n\n".join(f"--- page {i + 1} ---\n{t}" for i, t in enumerate(pages))


def _read_dir(root: Path) -> str:
    parts: list[str] = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue  # hidden files and folders (.git, .venv) are never what the user meant
        try:
            text = _read_file(p)
        except DocumentError:
            continue  # binary and unreadable files in a directory are skipped, not fatal
        parts.append(f"=== FILE: {rel.as_posix()} ===\n{text}")
    if not parts:
        raise DocumentError(f"the directory {root} holds no readable text files")
    return "\n\n".join(parts)
