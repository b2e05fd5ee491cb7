"""The service app: an OpenAI-compatible API where ``model`` names an RLM configuration (bare engine
names still answer as plain models), files, sessions, runs and their viewer, metrics and health. In bare
mode (``ServiceConfig.bare``, no RLMs: ``rlm-local serve --bare``, ``bare.create_app``) it serves only its
plain models, the same way and with the same errors, and keeps nothing on disk.

Errors are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, one line; a caller's mistake
is a 4xx and nothing half-done is stored; an engine that fails is a 502, one that cannot serve a 503. See
README "Serving RLMs" for the user's path through it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..documents import Caps
from ..scheduling import registry as schedulers
from . import viewer
from .auth import Access
from .config import BareModel, ServiceConfig
from .files import FileStore
from .middleware import MULTIPART_SLACK, BodyCap, HostCheck, HttpMetrics
from .routes import files, health, openai, runs, sessions
from .runs import Engines, RunManager
from .schemas import ApiError, error_response
from .sessions import SessionStore
from .telemetry import Telemetry


class Service:
    """Everything the app holds: stores, runs, engines, access control, telemetry. ``close()`` at exit.
    In bare mode there are no files, sessions or runs (None)."""

    def __init__(self, config: ServiceConfig, tracer_provider: Any = "default") -> None:
        self.config = config
        self.access = Access(config.keys)
        self.telemetry = Telemetry(tracer_provider)  # "default": OTLP when the OTEL_* variables say so
        self.caps = Caps(
            max_chars=config.max_extracted_chars,
            max_unpacked_bytes=4 * config.max_upload_bytes,
            max_seconds=config.max_extract_seconds,
        )
        self.engines = Engines()
        self.files: FileStore | None = None
        self.sessions: SessionStore | None = None
        self.runs: RunManager | None = None
        self.bare: dict[str, BareModel] = {m.name: m for m in config.bare}
        self._acquired: list[Any] = []  # engines whose shared scheduler this service holds
        if config.rlms:
            config.data_dir.mkdir(parents=True, exist_ok=True)
            self.files = FileStore(config.data_dir / "files")
            self.runs = RunManager(
                config,
                self.access,
                self.engines,
                on_finish=[self.telemetry.run_finished],
                on_refuse=self.telemetry.refused,
            )
            self.sessions = SessionStore(config.data_dir / "sessions", config)
            self.telemetry.watch_runs(self.runs.active)
        for cfg in config.rlms.values():
            for engine in dict.fromkeys(self.engines.for_config(cfg)):
                name = engine.model_name or engine.backend
                if name not in config.rlms and name not in self.bare:
                    self.bare[name] = BareModel(name, engine, schedulers.acquire(engine))
                    self._acquired.append(engine)
        self.telemetry.watch_queues(lambda: [m.scheduler for m in self.bare.values() if m.scheduler is not None])

    @property
    def bare_only(self) -> bool:
        """One plain model and no RLMs: every model name is that model (as llama.cpp's server does)."""
        return not self.config.rlms and len(self.bare) == 1

    def begin_shutdown(self) -> None:
        """The server got its stop signal: new runs are refused, going ones stopped, their clients told."""
        if self.runs is not None:
            self.runs.shutdown()

    def close(self) -> None:
        self.begin_shutdown()
        if self.runs is not None:
            self.runs.close()
        if self.sessions is not None:
            self.sessions.close()
        for engine in self._acquired:
            schedulers.release(engine)
        self.engines.close()
        self.telemetry.shutdown()


def create_service_app(
    config: ServiceConfig, tracer_provider: Any = "default", bind_host: str | None = None
) -> FastAPI:
    """The app over a new :class:`Service`: error shapes, the Host and body caps, and one router per
    resource. ``bind_host``: the address the server listens on, also served as a Host name."""
    service = Service(config, tracer_provider)
    app = FastAPI(
        title="rlm-local service" if config.rlms else "rlm-local",
        version="0.1.0",
        description="Recursive Language Models behind an OpenAI-compatible API.",
    )
    app.state.service = service
    _handle_errors(app)
    # Outermost first: the Host check, then the body cap, then the count of what was answered.
    app.add_middleware(HttpMetrics, count=service.telemetry.request)
    app.add_middleware(BodyCap, limit=config.max_upload_bytes + MULTIPART_SLACK)
    app.add_middleware(HostCheck, allowed=config.hosts(bind_host))
    for routes in (health, openai) if not config.rlms else (health, openai, sessions, files, runs):
        app.include_router(routes.router)
    if config.rlms:
        viewer.mount(app)
    return app


def _handle_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":  # its loc is a character position, not a field
            error = (first.get("ctx") or {}).get("error", "")
            return error_response(400, f"request body is not valid JSON: {error}".rstrip(": "))
        where = (first.get("ctx") or {}).get("param") or ".".join(
            str(p) for p in first.get("loc", ()) if p != "body" and "[" not in str(p) and p != "str"
        )
        msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        return error_response(400, f"{where}: {msg}" if where else msg, param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:  # a body cut off at the cap (middleware.BodyCap): read no more of it
            response = error_response(413, str(exc.detail), code="too_large")
            response.headers["connection"] = "close"
            return response
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error")
