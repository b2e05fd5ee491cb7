"""``/health`` and ``/metrics``. They follow the access rules of every other route (a key when keys are
configured, a loopback client when not) unless the config makes them public (``public_health``,
``public_metrics``), e.g. for a load balancer or a Prometheus server elsewhere."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from .deps import caller
from .deps import service as get_service

router = APIRouter()


@router.get("/health")
async def health(request: Request, service: Any = Depends(get_service)) -> dict:
    if not service.config.public_health:
        caller(request)
    out = {
        "status": "ok",
        "models": sorted(service.config.rlms) + sorted(service.bare),
        "runs_active": service.runs.active() if service.runs else 0,
    }
    if service.bare_only:  # as the bare server always answered
        model = next(iter(service.bare.values()))
        out.update(model=model.name, backend=model.engine.backend)
    return out


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, service: Any = Depends(get_service)) -> Any:
    if not service.config.public_metrics:
        caller(request)
    return service.telemetry.metrics_response()
