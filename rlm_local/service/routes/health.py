"""``/health`` and ``/metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from .deps import service as get_service

router = APIRouter()


@router.get("/health")
async def health(service: Any = Depends(get_service)) -> dict:
    return {
        "status": "ok",
        "models": sorted(service.config.rlms) + sorted(service.bare),
        "runs_active": service.runs.active(),
    }


@router.get("/metrics", include_in_schema=False)
async def metrics(service: Any = Depends(get_service)) -> Any:
    return service.telemetry.metrics_response()
