"""Uploaded documents, stored: the original bytes, their text (made once by rlm_local.documents, the same
extractor as the CLI's) and a meta file with the original's sha256, under
``data_dir/files/<owner>/<file id>/``. A file is written into a temporary folder and renamed into place,
so a failed or cut-off upload never leaves half a file behind."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

_ID = re.compile(r"^file-[0-9a-f]{24}$")


class FileStore:
    """Per-owner document store. Owners never see each other's files (a wrong owner is "no such file")."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _dir(self, owner: str, file_id: str) -> Path | None:
        if not _ID.match(file_id):
            return None
        d = self.root / _safe(owner) / file_id
        return d if (d / "meta.json").exists() else None

    def add(self, owner: str, filename: str, data: bytes, text: str, purpose: str = "assistants") -> dict[str, Any]:
        """Store an upload and its text (checked by the caller) whole, or nothing."""
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

    def original(self, owner: str, file_id: str) -> Path | None:
        """The uploaded bytes as stored (``GET /v1/files/{id}/content``)."""
        d = self._dir(owner, file_id)
        return d / "original" if d else None

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
