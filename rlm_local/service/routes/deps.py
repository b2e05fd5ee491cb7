"""What every route depends on: the service the app holds and the caller a request comes from."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from fastapi import Request

from ..auth import Caller

if TYPE_CHECKING:
    from ..app import Service


def service(request: Request) -> Service:
    return request.app.state.service


def caller(request: Request) -> Caller:
    return service(request).access.identify(
        request.headers.get("authorization"), request.client.host if request.client else None
    )


SHUTDOWN_WAIT_SECONDS = 3.0  # a stopped run gets this long to end before its client is answered anyway


async def wait_for_run(service: Service, record: Any, request: Request) -> None:
    """Until the run ends; a client that goes away meanwhile cancels it (as a streaming one does). When
    the server stops, the run is stopped and its client answered within SHUTDOWN_WAIT_SECONDS."""
    runs = service.runs
    assert runs is not None  # runs exist wherever RLM routes are served
    stop_seen: float | None = None
    while not await asyncio.to_thread(record.done.wait, 0.25):
        if await request.is_disconnected():
            runs.cancel(record.id)
            await asyncio.to_thread(record.done.wait)
        elif runs.stopping.is_set():
            stop_seen = stop_seen or time.monotonic()
            if time.monotonic() - stop_seen > SHUTDOWN_WAIT_SECONDS:
                record.stop_cause = record.stop_cause or "shutdown"
                return
