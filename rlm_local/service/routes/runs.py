"""``/v1/runs``: the runs a caller started, their metadata, their tree (for the viewer) and cancelling one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from .. import viewer
from ..auth import Caller
from ..schemas import not_found
from .deps import caller
from .deps import service as get_service

router = APIRouter()


def _run(service: Any, who: Caller, run_id: str) -> Any:
    record = service.runs.get(who.owner, run_id)
    if record is None:
        raise not_found("run", run_id)
    return record


@router.get("/v1/runs")
async def list_runs(who: Caller = Depends(caller), service: Any = Depends(get_service)) -> dict:
    return {"object": "list", "data": service.runs.list(who.owner)}


@router.get("/v1/runs/{run_id}")
async def get_run(run_id: str, who: Caller = Depends(caller), service: Any = Depends(get_service)) -> dict:
    return _run(service, who, run_id).meta()


@router.get("/v1/runs/{run_id}/tree")
async def run_tree(
    run_id: str,
    node: str = Query("run", max_length=64),
    offset: int = Query(0, ge=0),
    limit: int = Query(100, ge=1, le=1000),
    who: Caller = Depends(caller),
    service: Any = Depends(get_service),
) -> dict:
    return viewer.children(_run(service, who, run_id), node, offset, limit)


@router.post("/v1/runs/{run_id}/cancel")
async def cancel_run(run_id: str, who: Caller = Depends(caller), service: Any = Depends(get_service)) -> dict:
    record = _run(service, who, run_id)
    return {"id": record.id, "cancelled": service.runs.cancel(record.id)}
