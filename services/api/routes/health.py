"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.api.deps import RegistryDep, StoreDep
from shared.schemas import Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(request: Request, registry: RegistryDep, store: StoreDep) -> JSONResponse:
    """Redis and object storage answer."""
    checks: dict[str, str] = {}
    for name, probe in (("redis", registry.redis.ping), ("s3", store.ping)):
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"{type(exc).__name__}: {exc}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(Readiness(ready=ready, checks=checks).model_dump(), 200 if ready else 503)
