"""``/v1/sessions``: multi-turn work on the same documents, one REPL kept across questions. The documents of
a session (and of one run) are capped together at ``max_extracted_chars`` (named contexts from the config
do not count: the operator chose them); over the cap is 413 and the session is left as it was."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from .. import chat
from ..auth import Caller
from ..schemas import ApiError, Ask, ContextsAdd, SessionCreate, not_found
from ..sessions import snapshot_deadline
from .deps import caller, wait_for_run
from .deps import service as get_service

router = APIRouter()


def _session(service: Any, who: Caller, session_id: str) -> Any:
    s = service.sessions.get(who.owner, session_id)
    if s is None:
        raise not_found("session", session_id)
    return s


def _contexts(
    service: Any, who: Caller, file_ids: list[str], texts: list[str], name: str | None = None, had: int = 0
) -> list[dict]:
    """The context records to add, checked: files exist, names are configured, the characters of the
    session's documents (``had`` so far) stay under the cap."""
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
    total, cap = had + sum(_chars(c) for c in out), service.config.max_extracted_chars
    if total > cap:
        raise ApiError(
            413,
            f"the session's documents would be {total:,} characters; the limit is {cap:,}",
            param="contexts",
            code="too_large",
        )
    return out


def _chars(context: dict) -> int:
    return int(context.get("chars") or len(context.get("text", "")))


def _texts(service: Any, who: Caller, session: Any) -> list[str]:
    texts = []
    for c in session.contexts:
        if c["kind"] == "file":
            text = service.files.text(who.owner, c["file_id"])
            if text is None:
                raise ApiError(409, f"session file {c['file_id']} was deleted; add the document again")
            texts.append(text)
        elif c["kind"] == "named":
            texts.append(chat.documents(service.files, who.owner, [], c["name"], service.config.contexts))
        else:
            texts.append(c["text"])
    if not texts:
        raise ApiError(400, "the session has no contexts yet; add some with POST /v1/sessions/{id}/contexts")
    return texts


def ask_session(service: Any, who: Caller, session_id: str, question: str, model: str | None = None) -> Any:
    """Start a run that answers ``question`` in a session's REPL (409 while the session answers another,
    429 when no live REPL can be had). The REPL's variables are saved before the run ends (within its time
    and its key's run count), then the session is free for the next question."""
    s = _session(service, who, session_id)
    if model is not None and model != s.model:
        raise ApiError(400, f"session {s.id} uses model {s.model!r}, not {model!r}", param="model")
    context = chat._checked(chat.one_or_list(_texts(service, who, s)))
    if not s.busy.acquire(blocking=False):
        service.telemetry.refused("session_busy")
        raise ApiError(
            409, f"session {s.id} is answering another question; ask again when it is done", code="session_busy"
        )

    def save(record: Any) -> None:  # while the run still counts
        if record.result is not None and record.result.stopped_reason != "cancelled":
            s.history.append({"question": question, "answer": record.result.response, "run_id": record.id})
        s.save_variables(snapshot_deadline(record.deadline))
        s.last_used = time.time()
        service.sessions.save(s)

    try:
        service.sessions.make_room(s)
        return service.runs.start(
            who,
            service.config.rlms[s.model],
            context,
            s.question_with_history(question),
            session=s.id,
            sandbox_provider=s.sandbox_provider,
            before_end=save,
            on_done=lambda record: s.busy.release(),
            title=question,
        )
    except ApiError as exc:
        s.busy.release()
        if exc.code == "live_sessions":
            service.telemetry.refused(exc.code)
        raise
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
    added = _contexts(service, who, body.file_ids, body.contexts, had=sum(_chars(c) for c in s.contexts))
    if not added:
        raise ApiError(400, "give file_ids or contexts to add")
    s.contexts.extend(added)  # the next question binds them in its REPL
    s.last_used = time.time()
    service.sessions.save(s)
    return s.public()


@router.post("/v1/sessions/{session_id}/ask")
async def ask(
    session_id: str, body: Ask, request: Request, who: Caller = Depends(caller), service: Any = Depends(get_service)
) -> JSONResponse:
    record = ask_session(service, who, session_id, body.question)
    await wait_for_run(service, record, request)
    if err := chat.failed(record):
        raise err
    return JSONResponse(chat.completion(record))
