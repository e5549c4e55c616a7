"""Typed dependencies for route handlers; the clients live on app.state, made once at start.

They do no I/O, so they are `async def`: FastAPI runs a plain `def` dependency in its thread
pool, and a thread hop per dependency per request cost more than the work itself."""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.asyncio import Redis as AsyncRedis

from services.api.errors import ApiProblem
from shared.auth import Principal, TokenTable
from shared.catalog import DatasetCatalog
from shared.config import Settings
from shared.events import EventStream
from shared.jobs import JobRegistry
from shared.logs import current_job
from shared.planning import Planner
from shared.storage import ArtifactStore
from shared.workers import WorkerRegistry

bearer = HTTPBearer(auto_error=False, description="An owner's API token")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_registry(request: Request) -> JobRegistry:
    return request.app.state.registry


async def get_events(request: Request) -> EventStream:
    return request.app.state.events


async def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


async def get_celery(request: Request) -> Celery:
    return request.app.state.celery


async def get_catalog(request: Request) -> DatasetCatalog:
    return request.app.state.catalog


async def get_workers(request: Request) -> WorkerRegistry:
    return request.app.state.workers


async def get_planner(request: Request) -> Planner:
    return request.app.state.planner


async def get_async_redis(request: Request) -> AsyncRedis:
    return request.app.state.aredis


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller, from `Authorization: Bearer <token>`; 401 without a valid one."""
    tokens: TokenTable = request.app.state.tokens
    principal = tokens.authenticate(credentials.credentials if credentials else None)
    if principal is None:
        raise ApiProblem(
            401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    request.state.owner = principal.owner  # for the access log
    return principal


async def job_context(job_id: Annotated[str, Path(max_length=64, description="A job id")]) -> str:
    """The path's job id, also set as the log context: every log line names the job."""
    current_job.set(job_id)
    return job_id


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[JobRegistry, Depends(get_registry)]
EventsDep = Annotated[EventStream, Depends(get_events)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
CatalogDep = Annotated[DatasetCatalog, Depends(get_catalog)]
WorkersDep = Annotated[WorkerRegistry, Depends(get_workers)]
AsyncRedisDep = Annotated[AsyncRedis, Depends(get_async_redis)]
PlannerDep = Annotated[Planner, Depends(get_planner)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
JobIdDep = Annotated[str, Depends(job_context)]
