"""What every route depends on: the service the app holds and the caller a request comes from."""

from __future__ import annotations

import asyncio
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


async def wait_for_run(service: Service, record: Any, request: Request) -> None:
    """Until the run ends; a client that goes away meanwhile cancels it (as a streaming one does)."""
    while not await asyncio.to_thread(record.done.wait, 0.25):
        if await request.is_disconnected():
            service.runs.cancel(record.id)
            await asyncio.to_thread(record.done.wait)
