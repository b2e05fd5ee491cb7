"""``/v1/files``: uploaded documents (OpenAI's files API shape)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, File, Form, UploadFile

from ..auth import Caller
from ..files import UploadError
from ..schemas import ApiError, not_found
from .deps import caller
from .deps import service as get_service

router = APIRouter()


@router.post("/v1/files")
async def upload(
    file: UploadFile = File(...),
    purpose: str = Form("assistants"),
    who: Caller = Depends(caller),
    service: Any = Depends(get_service),
) -> dict:
    limit = service.config.max_upload_bytes
    data = await file.read(limit + 1)
    try:
        return await asyncio.to_thread(service.files.add, who.owner, file.filename or "upload", data, purpose[:64])
    except UploadError as exc:
        status = 413 if len(data) > limit else 400
        raise ApiError(status, str(exc), param="file") from None


@router.get("/v1/files")
async def list_files(who: Caller = Depends(caller), service: Any = Depends(get_service)) -> dict:
    return {"object": "list", "data": service.files.list(who.owner)}


@router.get("/v1/files/{file_id}")
async def get_file(file_id: str, who: Caller = Depends(caller), service: Any = Depends(get_service)) -> dict:
    meta = service.files.get(who.owner, file_id)
    if meta is None:
        raise not_found("file", file_id)
    return meta


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, who: Caller = Depends(caller), service: Any = Depends(get_service)) -> dict:
    if not service.files.delete(who.owner, file_id):
        raise not_found("file", file_id)
    return {"id": file_id, "object": "file", "deleted": True}
