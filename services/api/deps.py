"""Typed dependencies for route handlers; the clients live in app.state.services, made once
at start.

They do no I/O, so they are `async def`: FastAPI runs a plain `def` dependency in its thread
pool, and a thread hop per dependency per request cost more than the work itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.api.errors import ApiProblem
from services.api.planner import ApiPlanner
from shared.auth import Principal, TokenTable
from shared.catalog import DatasetCatalog
from shared.config import Settings
from shared.logs import current_job
from shared.schemas import UPLOADED_DATASET
from shared.state.events import EventStream
from shared.state.heartbeats import WorkerRegistry
from shared.state.inference import InferenceRequests
from shared.state.jobs import JobRegistry
from shared.state.records import JOB_ID
from shared.storage import ArtifactStore
from shared.uploads.slots import ParseSlots

bearer = HTTPBearer(auto_error=False, description="An owner's API token")


@dataclass(frozen=True)
class Services:
    """The clients the routes use, made once at start (main.py's lifespan)."""

    settings: Settings
    tokens: TokenTable
    registry: JobRegistry
    events: EventStream
    workers: WorkerRegistry
    store: ArtifactStore
    catalog: DatasetCatalog
    celery: Celery
    planner: ApiPlanner
    inference: InferenceRequests
    predict_slots: ParseSlots  # PREDICT_PARSE_CONCURRENCY (services/api/inference.py)


def services(request: Request) -> Services:
    """The app's clients, typed. The two hot routes (submit a job, read a job) call this
    rather than take one dependency per client: FastAPI spends ~25 µs per dependency per
    request solving it, ~10% of those routes' CPU (bench/RESULTS.md)."""
    found: Services = request.app.state.services
    return found


async def get_settings(request: Request) -> Settings:
    return services(request).settings


async def get_registry(request: Request) -> JobRegistry:
    return services(request).registry


async def get_events(request: Request) -> EventStream:
    return services(request).events


async def get_store(request: Request) -> ArtifactStore:
    return services(request).store


async def get_catalog(request: Request) -> DatasetCatalog:
    return services(request).catalog


async def get_workers(request: Request) -> WorkerRegistry:
    return services(request).workers


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller, from `Authorization: Bearer <token>`; 401 without a valid one."""
    token = credentials.credentials if credentials else None
    principal = services(request).tokens.authenticate(token)
    if principal is None:
        raise ApiProblem(
            401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    request.state.owner = principal.owner  # for the access log
    return principal


async def job_context(
    job_id: Annotated[str, Path(pattern=JOB_ID, description="A job id: 16 lowercase hex digits")],
) -> str:
    """The path's job id, also set as the log context: every log line names the job.

    Validated by pattern (a 422 naming `job_id` otherwise) before any route reads Redis or
    S3: the id becomes part of keys (`{prefix}:job:{id}`, `jobs/{id}/...`), so a suffix such
    as `:events` must not reach them."""
    current_job.set(job_id)
    return job_id


async def dataset_path_id(
    dataset_id: Annotated[
        str, Path(pattern=UPLOADED_DATASET.pattern, description="A data set id: ds-<16 hex>")
    ],
) -> str:
    """The path's data set id, validated by pattern (a 422 naming `dataset_id` otherwise)."""
    return dataset_id


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[JobRegistry, Depends(get_registry)]
EventsDep = Annotated[EventStream, Depends(get_events)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
CatalogDep = Annotated[DatasetCatalog, Depends(get_catalog)]
WorkersDep = Annotated[WorkerRegistry, Depends(get_workers)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
JobIdDep = Annotated[str, Depends(job_context)]
DatasetIdDep = Annotated[str, Depends(dataset_path_id)]
