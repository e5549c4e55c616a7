"""The workers online, from their heartbeats: what each one runs (memory class, device, CPU
quota and thread counts) and the job it is busy with."""

from __future__ import annotations

from fastapi import APIRouter

from services.api.deps import PrincipalDep, WorkersDep
from services.api.errors import ERROR_RESPONSES
from shared.schemas import WorkerPublic

router = APIRouter(prefix="/v1/workers", tags=["workers"], responses=ERROR_RESPONSES)


@router.get("")
async def list_workers(principal: PrincipalDep, workers: WorkersDep) -> list[WorkerPublic]:
    """Training workers seen in the last 20 s (heartbeats every 5 s), by name; at most 1 s
    old. Any signed-in user may read it."""
    return await workers.aonline()
