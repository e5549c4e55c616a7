"""Liveness, readiness and Prometheus metrics: open, no token needed."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.api.deps import RegistryDep, StoreDep
from services.api.metrics import REGISTRY
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
    for name, probe in (("redis", registry.ping), ("s3", store.ping)):
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"{type(exc).__name__}: {exc}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(Readiness(ready=ready, checks=checks).model_dump(), 200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    """Prometheus text format: jobs, queue depth, workers, request latency."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
