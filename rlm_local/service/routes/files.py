"""``/v1/files``: uploaded documents (OpenAI's files API shape). An upload is read up to the cap (the body
cap of the app stops a longer one, announced or chunked), turned into text by rlm_local.documents under
the configured caps, then stored whole; a refused upload stores nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import FileResponse

from ...documents import extract
from ...errors import DocumentError, DocumentTooLarge
from ..auth import Caller
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
    name = file.filename or "upload"
    if len(data) > limit:
        raise ApiError(413, f"{name} is over the upload limit of {limit:,} bytes", param="file", code="too_large")
    try:
        text = await asyncio.to_thread(extract, name, data, service.caps)
    except DocumentTooLarge as exc:
        raise ApiError(413, str(exc), param="file", code="too_large") from None
    except DocumentError as exc:
        raise ApiError(400, str(exc), param="file") from None
    return await asyncio.to_thread(service.files.add, who.owner, name, data, text, purpose[:64])


@router.get("/v1/files")
async def list_files(who: Caller = Depends(caller), service: Any = Depends(get_service)) -> dict:
    return {"object": "list", "data": service.files.list(who.owner)}


@router.get("/v1/files/{file_id}")
async def get_file(file_id: str, who: Caller = Depends(caller), service: Any = Depends(get_service)) -> dict:
    meta = service.files.get(who.owner, file_id)
    if meta is None:
        raise not_found("file", file_id)
    return meta


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, who: Caller = Depends(caller), service: Any = Depends(get_service)) -> Any:
    """The bytes as uploaded (``client.files.content(id)``)."""
    meta, path = service.files.get(who.owner, file_id), service.files.original(who.owner, file_id)
    if meta is None or path is None:
        raise not_found("file", file_id)
    return FileResponse(path, media_type="application/octet-stream", filename=meta["filename"])


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, who: Caller = Depends(caller), service: Any = Depends(get_service)) -> dict:
    if not service.files.delete(who.owner, file_id):
        raise not_found("file", file_id)
    return {"id": file_id, "object": "file", "deleted": True}
