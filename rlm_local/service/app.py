"""The service app: an OpenAI-compatible API where ``model`` names an RLM configuration (bare engine
names still answer as plain models), files, sessions, runs and their viewer, metrics and health.

Errors are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, one line; bad input is a
4xx and nothing half-done is stored. See README "Serving RLMs" for the user's path through it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..scheduling import registry as schedulers
from . import viewer
from .auth import Access, Denied
from .config import ServiceConfig
from .files import FileStore
from .routes import files, health, openai, runs, sessions
from .runs import Engines, RunManager
from .schemas import ApiError, error_response
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
    """The app over a new :class:`Service`: error shapes, the upload cap, and one router per resource."""
    service = Service(config, tracer_provider)
    app = FastAPI(
        title="rlm-local service",
        version="0.1.0",
        description="Recursive Language Models behind an OpenAI-compatible API.",
    )
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
    for routes in (health, openai, sessions, files, runs):
        app.include_router(routes.router)
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
                response = error_response(
                    413,
                    f"upload of {int(length):,} bytes is over the limit of {self.limit - 64 * 1024:,}",
                    param="file",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
