"""Uploaded documents: text, markdown, PDF or a zip of a directory, turned into text once and stored under
``data_dir/files/<owner>/<file id>/`` with the original's sha256. A file is written into a temporary
folder and renamed into place, so a failed or cut-off upload never leaves half a file behind."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

from ..documents import DocumentError, _decode
from ..errors import UploadError

TEXT_SUFFIXES = {
    ".txt",
    ".md",
    ".markdown",
    ".rst",
    ".csv",
    ".json",
    ".jsonl",
    ".log",
    ".py",
    ".html",
    ".xml",
    ".yaml",
    ".yml",
    ".toml",
    ".tex",
    ".ini",
    ".cfg",
    ".sql",
    ".js",
    ".ts",
    ".c",
    ".h",
    ".java",
    "",
}
_ID = re.compile(r"^file-[0-9a-f]{24}$")


def to_text(name: str, data: bytes, cap: int) -> str:
    """The document's text; UploadError when it cannot be one."""
    suffix = Path(name).suffix.lower()
    if data[:5] == b"%PDF-" or suffix == ".pdf":
        return _pdf(data, name)
    if data[:4] == b"PK\x03\x04" or suffix == ".zip":
        return _zip(data, name, cap)
    if suffix not in TEXT_SUFFIXES:
        raise UploadError(f"{name}: unsupported file type {suffix!r} (text, markdown, PDF or a zip of a directory)")
    try:
        text = _decode(data, name)
    except DocumentError as exc:
        raise UploadError(str(exc)) from None
    if not text.strip():
        raise UploadError(f"{name} is empty")
    return text


def _pdf(data: bytes, name: str) -> str:
    from pypdf import PdfReader

    try:
        pages = [page.extract_text() or "" for page in PdfReader(io.BytesIO(data)).pages]
    except Exception as exc:  # pypdf raises many types on damaged input
        raise UploadError(f"cannot read PDF {name}: {type(exc).__name__}: {exc}") from None
    if not any(t.strip() for t in pages):
        raise UploadError(f"{name} has no extractable text (a scanned PDF needs OCR first)")
    return "\n\n".join(f"--- page {i + 1} ---\n{t}" for i, t in enumerate(pages))


def _zip(data: bytes, name: str, cap: int) -> str:
    """Text files of a zipped directory, read in memory (never extracted to disk), each under a header."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = sorted((m for m in archive.infolist() if not m.is_dir()), key=lambda m: m.filename)
        if sum(m.file_size for m in members) > cap:
            raise UploadError(f"{name} unpacks to more than {cap:,} bytes")
        parts = []
        for m in members:
            rel = m.filename
            if any(p.startswith(".") or p == "__MACOSX" for p in rel.split("/")):
                continue
            try:
                text = to_text(rel, archive.read(m), cap) if not rel.lower().endswith(".zip") else ""
            except UploadError:
                continue  # binary and unreadable members are skipped, as for a directory on disk
            if text.strip():
                parts.append(f"=== FILE: {rel} ===\n{text}")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, RuntimeError) as exc:
        raise UploadError(f"cannot read zip {name}: {exc}") from None
    if not parts:
        raise UploadError(f"{name} holds no readable text files")
    return "\n\n".join(parts)


class FileStore:
    """Per-owner document store. Owners never see each other's files (a wrong owner is "no such file")."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = root, max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _dir(self, owner: str, file_id: str) -> Path | None:
        if not _ID.match(file_id):
            return None
        d = self.root / _safe(owner) / file_id
        return d if (d / "meta.json").exists() else None

    def add(self, owner: str, filename: str, data: bytes, purpose: str = "assistants") -> dict[str, Any]:
        if len(data) > self.max_bytes:
            raise UploadError(f"{filename} is {len(data):,} bytes; the limit is {self.max_bytes:,}")
        text = to_text(filename, data, self.max_bytes * 4)
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        meta = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": Path(filename).name or "upload",
            "purpose": purpose,
            "status": "processed",
            "sha256": hashlib.sha256(data).hexdigest(),
            "text_chars": len(text),
        }
        owner_dir = self.root / _safe(owner)
        owner_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".upload-", dir=owner_dir))
        try:
            (tmp / "original").write_bytes(data)
            (tmp / "text.txt").write_text(text, encoding="utf-8")
            (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
            os.replace(tmp, owner_dir / file_id)  # atomic: the file appears whole or not at all
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return meta

    def get(self, owner: str, file_id: str) -> dict[str, Any] | None:
        d = self._dir(owner, file_id)
        return json.loads((d / "meta.json").read_text(encoding="utf-8")) if d else None

    def text(self, owner: str, file_id: str) -> str | None:
        d = self._dir(owner, file_id)
        return (d / "text.txt").read_text(encoding="utf-8") if d else None

    def list(self, owner: str) -> list[dict[str, Any]]:
        d = self.root / _safe(owner)
        if not d.is_dir():
            return []
        metas = [json.loads(m.read_text(encoding="utf-8")) for m in d.glob("file-*/meta.json")]
        return sorted(metas, key=lambda m: m["created_at"])

    def delete(self, owner: str, file_id: str) -> bool:
        d = self._dir(owner, file_id)
        if d is None:
            return False
        trash = d.with_name(f".deleted-{file_id}")
        os.replace(d, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return True


def _safe(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()[:16]
