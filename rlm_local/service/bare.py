"""One engine behind an OpenAI-compatible API (`rlm-local serve --bare`): the service in bare mode, so the
same pydantic request models, error shapes, access rules and metrics as the RLM service. Lets other
tools (and other RLM implementations) use our engines and scheduler over the network.

Requests go through the scheduler when one is given, so concurrent HTTP clients are batched together with
every other caller of the same engine; without one, the engine is called directly under a lock. The
OpenAI ``user`` field (else the ``X-RLM-Run-Id`` header) names the run for the scheduler's fairness.
Non-streaming only: ``stream=true`` is answered with 400. Any model name answers (the one model).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from ..engines.base import Engine
from .app import create_service_app
from .config import BareModel, ServiceConfig


def create_app(engine: Engine, scheduler: Any = None, model_name: str | None = None, **config: Any) -> FastAPI:
    """The app serving ``engine`` as ``model_name`` (default: the engine's), through
    ``scheduler.submit(requests, run_id)`` when given. ``config``: other ServiceConfig fields (keys,
    allowed_hosts, max_upload_bytes, ...)."""
    name = model_name or engine.model_name or "rlm-local"
    bind = config.pop("bind_host", None)
    service_config = ServiceConfig(bare=[BareModel(name, engine, scheduler)], **config)
    return create_service_app(service_config, tracer_provider=None, bind_host=bind)


def serve(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 8000,
    scheduler: Any = None,
    model_name: str | None = None,
    log_level: str = "info",
    use_scheduler: bool = True,
    **config: Any,
) -> None:
    """Run the server in the foreground until interrupted (`rlm-local serve --bare`). Unless told
    otherwise, the engine's shared scheduler (scheduling/registry.py) is put in front of it, so concurrent
    clients are batched together, and with any RLM of this process using the same engine."""
    from .serving import run_server

    shared = scheduler is None and use_scheduler
    if shared:  # the engine's process-wide scheduler: RLMs in this process batch with HTTP clients
        from ..scheduling import registry as schedulers

        scheduler = schedulers.acquire(engine)
    try:
        run_server(create_app(engine, scheduler, model_name, bind_host=host, **config), host, port, log_level)
    finally:
        if shared:
            schedulers.release(engine)
