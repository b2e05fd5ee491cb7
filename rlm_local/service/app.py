"""The service app: an OpenAI-compatible API where ``model`` names an RLM configuration (bare engine
names still answer as plain models), files, sessions, runs and their viewer, metrics and health.

Errors are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, one line; bad input is a
4xx and nothing half-done is stored. See README "Serving RLMs" for the user's path through it.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..scheduling import registry as schedulers
from ..engines.base import Request as EngineRequest
from ..engines.base import SamplingParams
from . import chat, viewer
from .auth import Access, Caller, Denied
from .config import ServiceConfig
from .files import FileStore, UploadError
from .runs import Engines, RunManager
from .schemas import (ApiError, Ask, ChatRequest, CompletionRequest, ContextsAdd, SessionCreate, error_response,
                      not_found)
from .sessions import SessionStore
from .telemetry import Telemetry


class Service:
    """Everything the app holds: stores, runs, engines, access control, telemetry. ``close()`` at exit."""

    def __init__(self, config: ServiceConfig, tracer_provider: Any = "default") -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.access = Access(config.keys)
        self.engines = Engines()
        self.files = FileStore(config.data_dir / "files", config.max_upload_bytes)
        self.sessions = SessionStore(config.data_dir / "sessions", config.session_ttl)
        self.telemetry = Telemetry(tracer_provider)  # "default": OTLP when the OTEL_* variables say so
        self.runs = RunManager(config, self.access, self.engines, on_finish=[self.telemetry.run_finished])
        self.bare: dict[str, Any] = {}  # bare model name -> (engine, scheduler)
        for cfg in config.rlms.values():
            for engine in dict.fromkeys(self.engines.for_config(cfg)):
                name = engine.model_name or engine.backend
                if name not in config.rlms and name not in self.bare:
                    self.bare[name] = (engine, schedulers.acquire(engine))
        self.telemetry.watch_queues(lambda: [s for _, s in self.bare.values()])

    def close(self) -> None:
        self.runs.close()
        self.sessions.close()
        for engine, _ in self.bare.values():
            schedulers.release(engine)
        self.engines.close()
        self.telemetry.shutdown()


def create_service_app(config: ServiceConfig, tracer_provider: Any = "default") -> FastAPI:
    service = Service(config, tracer_provider)
    app = FastAPI(title="rlm-local service", version="0.1.0",
                  description="Recursive Language Models behind an OpenAI-compatible API.")
    app.state.service = service

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, str(exc), exc.kind, exc.param, exc.code)

    @app.exception_handler(Denied)
    async def _denied(_: Request, exc: Denied) -> JSONResponse:
        return error_response(exc.status, str(exc), exc.kind)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body" and "[" not in str(p) and p != "str")
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg = "request body is not valid JSON"
        return error_response(400, f"{where}: {msg}" if where else msg, param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error")

    app.add_middleware(UploadCap, limit=config.max_upload_bytes + 64 * 1024)

    def caller(request: Request) -> Caller:
        return service.access.identify(request.headers.get("authorization"),
                                       request.client.host if request.client else None)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": sorted(config.rlms) + sorted(service.bare),
                "runs_active": service.runs.active()}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Any:
        return service.telemetry.metrics_response()

    @app.get("/v1/models")
    async def models(who: Caller = Depends(caller)) -> dict:
        # Bare models first: clients that take the first listed model (rlm-local's openai engine without a
        # model name) keep getting the plain model, as from the server before RLMs.
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "rlm-local"} for n in service.bare]
        data += [{"id": n, "object": "model", "created": 0, "owned_by": "rlm-local", "rlm": c.public()}
                 for n, c in config.rlms.items()]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request, who: Caller = Depends(caller)) -> Any:
        if req.model in service.bare and req.model not in config.rlms:
            return await _bare(req)
        cfg = config.rlms.get(req.model)
        if cfg is None:
            raise ApiError(404, f"the model {req.model!r} does not exist; known: "
                           f"{sorted(config.rlms) + sorted(service.bare)}", param="model", code="model_not_found")
        if req.rlm and req.rlm.session:
            record = _ask_session(who, req.rlm.session, _last_user(req), req.model)
        else:
            context, question = chat.context_and_question(req, service.files, who.owner, config.contexts)
            record = service.runs.start(who, cfg, context, question)
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            return EventSourceResponse(chat.stream(record, include, service.runs.cancel), ping=10,
                                       headers={"x-rlm-run-id": record.id})
        await _wait(record, request)
        if record.result is None:
            raise chat.failed(record)
        return JSONResponse(chat.completion(record), headers={"x-rlm-run-id": record.id})

    async def _wait(record: Any, request: Request) -> None:
        """Until the run ends; a client that goes away meanwhile cancels it (as a streaming one does)."""
        while not await asyncio.to_thread(record.done.wait, 0.25):
            if await request.is_disconnected():
                service.runs.cancel(record.id)
                await asyncio.to_thread(record.done.wait)

    async def _generate(req: ChatRequest | CompletionRequest, requests: list[dict[str, Any]],
                        default_max_tokens: int) -> list[Any]:
        """Plain model calls on a bare model, through its shared scheduler."""
        _, scheduler = service.bare[req.model]
        if req.stream:
            raise ApiError(400, "stream=true is served for RLM models only; bare models answer whole",
                           param="stream")
        max_tokens = req.max_tokens or getattr(req, "max_completion_tokens", None) or default_max_tokens
        sampling = SamplingParams(max_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
                                  top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed,
                                  stop=(req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ()))
        started = time.monotonic()
        results = await asyncio.to_thread(scheduler.submit, [EngineRequest(sampling=sampling, **r) for r in requests],
                                          req.user or "http")
        service.telemetry.model_call(req.model, "bare", time.monotonic() - started)
        if not all(r.ok for r in results):
            error = next(r.error for r in results if not r.ok)
            raise ApiError(502, f"engine error: {error}", kind="server_error", code="engine_error")
        return results

    def _usage(results: list[Any]) -> dict[str, Any]:
        p, c = sum(r.usage.prompt_tokens for r in results), sum(r.usage.completion_tokens for r in results)
        cached = [r.usage.cached_tokens for r in results]
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                "prompt_tokens_details": {"cached_tokens": None if None in cached else sum(cached)}}

    async def _bare(req: ChatRequest) -> JSONResponse:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        (result,) = await _generate(req, [{"messages": messages}], SamplingParams().max_tokens)
        return JSONResponse({"id": f"chatcmpl-{time.time_ns():x}", "object": "chat.completion",
                             "created": int(time.time()), "model": req.model,
                             "choices": [{"index": 0, "finish_reason": result.finish_reason, "logprobs": None,
                                          "message": {"role": "assistant", "content": result.text}}],
                             "usage": _usage([result])})

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, who: Caller = Depends(caller)) -> JSONResponse:
        if req.model not in service.bare:
            raise ApiError(404, f"the model {req.model!r} is not a bare model here (RLM models answer "
                           f"/v1/chat/completions); bare models: {sorted(service.bare)}", param="model",
                           code="model_not_found")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise ApiError(400, "prompt: give a string or a non-empty list of strings", param="prompt")
        results = await _generate(req, [{"prompt": p} for p in prompts], 16)
        return JSONResponse({"id": f"cmpl-{time.time_ns():x}", "object": "text_completion", "created": int(time.time()),
                             "model": req.model, "usage": _usage(results),
                             "choices": [{"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
                                         for i, r in enumerate(results)]})

    # ---- sessions ---------------------------------------------------------------------------------------
    def _session(who: Caller, session_id: str) -> Any:
        s = service.sessions.get(who.owner, session_id)
        if s is None:
            raise not_found("session", session_id)
        return s

    def _contexts(who: Caller, file_ids: list[str], texts: list[str], name: str | None = None) -> list[dict]:
        out: list[dict] = []
        for fid in file_ids:
            meta = service.files.get(who.owner, fid)
            if meta is None:
                raise not_found("file", fid)
            out.append({"kind": "file", "file_id": fid, "filename": meta["filename"], "chars": meta["text_chars"]})
        if name is not None:
            if name not in config.contexts:
                raise not_found("context", name)
            out.append({"kind": "named", "name": name})
        out += [{"kind": "text", "text": t} for t in texts if t.strip()]
        return out

    def _texts(who: Caller, session: Any) -> list[str]:
        texts = []
        for c in session.contexts:
            if c["kind"] == "file":
                text = service.files.text(who.owner, c["file_id"])
                if text is None:
                    raise ApiError(409, f"session file {c['file_id']} was deleted; add the document again")
                texts.append(text)
            elif c["kind"] == "named":
                texts.append(chat.documents(service.files, who.owner, [], c["name"], config.contexts)[0])
            else:
                texts.append(c["text"])
        if not texts:
            raise ApiError(400, "the session has no contexts yet; add some with POST /v1/sessions/{id}/contexts")
        return texts

    def _ask_session(who: Caller, session_id: str, question: str, model: str | None = None) -> Any:
        s = _session(who, session_id)
        if model is not None and model != s.model:
            raise ApiError(400, f"session {s.id} uses model {s.model!r}, not {model!r}", param="model")
        context = chat._checked(_texts(who, s))
        if not s.busy.acquire(blocking=False):
            raise ApiError(409, f"session {s.id} is answering another question; ask again when it is done",
                           code="session_busy")

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
            return service.runs.start(who, config.rlms[s.model], context, s.question_with_history(question),
                                      session=s.id, sandbox_provider=s.sandbox_provider, on_done=done,
                                      title=question)
        except BaseException:
            s.busy.release()
            raise

    @app.post("/v1/sessions", status_code=201)
    async def create_session(body: SessionCreate, who: Caller = Depends(caller)) -> dict:
        if body.model not in config.rlms:
            raise ApiError(404, f"the model {body.model!r} is not an RLM model here", param="model",
                           code="model_not_found")
        s = service.sessions.create(who.owner, body.model, _contexts(who, body.file_ids, body.contexts, body.context))
        return s.public()

    @app.get("/v1/sessions")
    async def list_sessions(who: Caller = Depends(caller)) -> dict:
        return {"object": "list", "data": [s.public() for s in service.sessions.list(who.owner)]}

    @app.get("/v1/sessions/{session_id}")
    async def get_session(session_id: str, who: Caller = Depends(caller)) -> dict:
        return _session(who, session_id).public()

    @app.delete("/v1/sessions/{session_id}")
    async def delete_session(session_id: str, who: Caller = Depends(caller)) -> dict:
        if _session(who, session_id).busy.locked():
            raise ApiError(409, f"session {session_id} is answering a question; cancel its run or wait",
                           code="session_busy")
        await asyncio.to_thread(service.sessions.delete, who.owner, session_id)
        return {"id": session_id, "object": "session.deleted", "deleted": True}

    @app.post("/v1/sessions/{session_id}/contexts")
    async def add_contexts(session_id: str, body: ContextsAdd, who: Caller = Depends(caller)) -> dict:
        s = _session(who, session_id)
        added = _contexts(who, body.file_ids, body.contexts)
        if not added:
            raise ApiError(400, "give file_ids or contexts to add")
        s.contexts.extend(added)  # the next question starts a REPL with them (variables carried over)
        s.last_used = time.time()
        service.sessions.save(s)
        return s.public()

    @app.post("/v1/sessions/{session_id}/ask")
    async def ask(session_id: str, body: Ask, request: Request, who: Caller = Depends(caller)) -> JSONResponse:
        record = _ask_session(who, session_id, body.question)
        await _wait(record, request)
        if record.result is None:
            raise chat.failed(record)
        return JSONResponse(chat.completion(record))

    # ---- files ------------------------------------------------------------------------------------------
    @app.post("/v1/files")
    async def upload(file: UploadFile = File(...), purpose: str = Form("assistants"),
                     who: Caller = Depends(caller)) -> dict:
        data = await file.read(config.max_upload_bytes + 1)
        try:
            return await asyncio.to_thread(service.files.add, who.owner, file.filename or "upload", data, purpose[:64])
        except UploadError as exc:
            status = 413 if len(data) > config.max_upload_bytes else 400
            raise ApiError(status, str(exc), param="file") from None

    @app.get("/v1/files")
    async def list_files(who: Caller = Depends(caller)) -> dict:
        return {"object": "list", "data": service.files.list(who.owner)}

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str, who: Caller = Depends(caller)) -> dict:
        meta = service.files.get(who.owner, file_id)
        if meta is None:
            raise not_found("file", file_id)
        return meta

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str, who: Caller = Depends(caller)) -> dict:
        if not service.files.delete(who.owner, file_id):
            raise not_found("file", file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    # ---- runs -------------------------------------------------------------------------------------------
    def _run(who: Caller, run_id: str) -> Any:
        record = service.runs.get(who.owner, run_id)
        if record is None:
            raise not_found("run", run_id)
        return record

    @app.get("/v1/runs")
    async def list_runs(who: Caller = Depends(caller)) -> dict:
        return {"object": "list", "data": service.runs.list(who.owner)}

    @app.get("/v1/runs/{run_id}")
    async def get_run(run_id: str, who: Caller = Depends(caller)) -> dict:
        return _run(who, run_id).meta()

    @app.get("/v1/runs/{run_id}/tree")
    async def run_tree(run_id: str, node: str = Query("run", max_length=64), offset: int = Query(0, ge=0),
                       limit: int = Query(100, ge=1, le=1000), who: Caller = Depends(caller)) -> dict:
        return viewer.children(_run(who, run_id), node, offset, limit)

    @app.post("/v1/runs/{run_id}/cancel")
    async def cancel_run(run_id: str, who: Caller = Depends(caller)) -> dict:
        record = _run(who, run_id)
        return {"id": record.id, "cancelled": service.runs.cancel(record.id)}

    viewer.mount(app)
    return app


class UploadCap:
    """An upload announced as over the cap is refused before its body is read (or spooled to disk). Plain
    ASGI: a BaseHTTPMiddleware would hide client disconnects from the endpoints."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/v1/files":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit:
                response = error_response(413, f"upload of {int(length):,} bytes is over the limit of "
                                          f"{self.limit - 64 * 1024:,}", param="file")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _last_user(req: ChatRequest) -> str:
    for m in reversed(req.messages):
        if m.role == "user":
            return m.text()
    raise ApiError(400, "a session question needs a user message", param="messages")

