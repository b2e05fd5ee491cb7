"""``/v1/sessions``: multi-turn work on the same documents, one REPL kept across questions."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from .. import chat
from ..auth import Caller
from ..schemas import ApiError, Ask, ContextsAdd, SessionCreate, not_found
from .deps import caller, wait_for_run
from .deps import service as get_service

router = APIRouter()


def _session(service: Any, who: Caller, session_id: str) -> Any:
    s = service.sessions.get(who.owner, session_id)
    if s is None:
        raise not_found("session", session_id)
    return s


def _contexts(service: Any, who: Caller, file_ids: list[str], texts: list[str], name: str | None = None) -> list[dict]:
    out: list[dict] = []
    for fid in file_ids:
        meta = service.files.get(who.owner, fid)
        if meta is None:
            raise not_found("file", fid)
        out.append({"kind": "file", "file_id": fid, "filename": meta["filename"], "chars": meta["text_chars"]})
    if name is not None:
        if name not in service.config.contexts:
            raise not_found("context", name)
        out.append({"kind": "named", "name": name})
    out += [{"kind": "text", "text": t} for t in texts if t.strip()]
    return out


def _texts(service: Any, who: Caller, session: Any) -> list[str]:
    texts = []
    for c in session.contexts:
        if c["kind"] == "file":
            text = service.files.text(who.owner, c["file_id"])
            if text is None:
                raise ApiError(409, f"session file {c['file_id']} was deleted; add the document again")
            texts.append(text)
        elif c["kind"] == "named":
            texts.append(chat.documents(service.files, who.owner, [], c["name"], service.config.contexts)[0])
        else:
            texts.append(c["text"])
    if not texts:
        raise ApiError(400, "the session has no contexts yet; add some with POST /v1/sessions/{id}/contexts")
    return texts


def ask_session(service: Any, who: Caller, session_id: str, question: str, model: str | None = None) -> Any:
    """Start a run that answers ``question`` in a session's REPL (409 while the session answers another)."""
    s = _session(service, who, session_id)
    if model is not None and model != s.model:
        raise ApiError(400, f"session {s.id} uses model {s.model!r}, not {model!r}", param="model")
    context = chat._checked(_texts(service, who, s))
    if not s.busy.acquire(blocking=False):
        raise ApiError(
            409, f"session {s.id} is answering another question; ask again when it is done", code="session_busy"
        )

    def done(record: Any) -> None:
        try:
            if record.result is not None and record.result.stopped_reason != "cancelled":
                s.history.append({"question": question, "answer": record.result.response, "run_id": record.id})
            if s.sandbox is not None:
                s.snapshot()
            s.last_used = time.time()
            service.sessions.save(s)
        finally:
            s.busy.release()

    try:
        return service.runs.start(
            who,
            service.config.rlms[s.model],
            context,
            s.question_with_history(question),
            session=s.id,
            sandbox_provider=s.sandbox_provider,
            on_done=done,
            title=question,
        )
    except BaseException:
        s.busy.release()
        raise


@router.post("/v1/sessions", status_code=201)
async def create_session(
    body: SessionCreate, who: Caller = Depends(caller), service: Any = Depends(get_service)
) -> dict:
    if body.model not in service.config.rlms:
        raise ApiError(404, f"the model {body.model!r} is not an RLM model here", param="model", code="model_not_found")
    contexts = _contexts(service, who, body.file_ids, body.contexts, body.context)
    return service.sessions.create(who.owner, body.model, contexts).public()


@router.get("/v1/sessions")
async def list_sessions(who: Caller = Depends(caller), service: Any = Depends(get_service)) -> dict:
    return {"object": "list", "data": [s.public() for s in service.sessions.list(who.owner)]}


@router.get("/v1/sessions/{session_id}")
async def get_session(session_id: str, who: Caller = Depends(caller), service: Any = Depends(get_service)) -> dict:
    return _session(service, who, session_id).public()


@router.delete("/v1/sessions/{session_id}")
async def delete_session(session_id: str, who: Caller = Depends(caller), service: Any = Depends(get_service)) -> dict:
    if _session(service, who, session_id).busy.locked():
        raise ApiError(
            409, f"session {session_id} is answering a question; cancel its run or wait", code="session_busy"
        )
    await asyncio.to_thread(service.sessions.delete, who.owner, session_id)
    return {"id": session_id, "object": "session.deleted", "deleted": True}


@router.post("/v1/sessions/{session_id}/contexts")
async def add_contexts(
    session_id: str, body: ContextsAdd, who: Caller = Depends(caller), service: Any = Depends(get_service)
) -> dict:
    s = _session(service, who, session_id)
    added = _contexts(service, who, body.file_ids, body.contexts)
    if not added:
        raise ApiError(400, "give file_ids or contexts to add")
    s.contexts.extend(added)  # the next question starts a REPL with them (variables carried over)
    s.last_used = time.time()
    service.sessions.save(s)
    return s.public()


@router.post("/v1/sessions/{session_id}/ask")
async def ask(
    session_id: str, body: Ask, request: Request, who: Caller = Depends(caller), service: Any = Depends(get_service)
) -> JSONResponse:
    record = ask_session(service, who, session_id, body.question)
    await wait_for_run(service, record, request)
    if record.result is None:
        raise chat.failed(record)
    return JSONResponse(chat.completion(record))
