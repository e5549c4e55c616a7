"""/v1/jobs: submit, list, read, cancel, metrics and artifacts of training jobs."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, status
from fastapi.exceptions import RequestValidationError

from services.api.deps import CatalogDep, CeleryDep, EventsDep, RegistryDep, SettingsDep, StoreDep
from shared.catalog import DatasetCatalog, DatasetNotFound
from shared.queue import enqueue_training
from shared.schemas import (
    ArtifactPublic,
    ArtifactsPublic,
    EventKind,
    JobEventsPublic,
    JobPublic,
    JobSpec,
    JobsPublic,
    Message,
)
from shared.status import JobStatus
from shared.storage import JobKeys
from shared.zoo import MODELS, fit_problem

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Message, "description": "No job with this id"}
}


@router.post("", status_code=status.HTTP_201_CREATED, responses={503: {"model": Message}})
def submit_job(
    spec: Annotated[JobSpec, Body()],
    catalog: CatalogDep,
    registry: RegistryDep,
    celery: CeleryDep,
    settings: SettingsDep,
) -> JobPublic:
    """Queue a training job."""
    _check_fits(spec, catalog)
    job = registry.create(spec)
    try:
        enqueue_training(celery, job.id, settings.QUEUE)
    except Exception as exc:  # broker down: say so, and do not leave a job nobody will run
        log.exception("could not enqueue job %s", job.id)
        registry.transition(job.id, JobStatus.FAILED, error=f"could not enqueue: {exc}")
        raise HTTPException(503, "the job queue is unavailable; try again") from exc
    return job


def _check_fits(spec: JobSpec, catalog: DatasetCatalog) -> None:
    """422, in FastAPI's own error format, when the data set is unknown or the model cannot
    take its images (e.g. book_conv_gan on 28x28 without resize)."""
    try:
        problem = fit_problem(
            MODELS[spec.model], catalog.info(spec.dataset), spec.crop_hw(), spec.resize_hw()
        )
    except DatasetNotFound as exc:
        problem = ("dataset", f"{exc}: upload it first (POST /v1/datasets)")
    if problem is not None:
        field, why = problem
        raise RequestValidationError(
            [
                {
                    "type": "model_data_mismatch",
                    "loc": ("body", spec.task, field),
                    "msg": why,
                    "input": getattr(spec, field),
                }
            ]
        )


@router.get("")
def list_jobs(
    registry: RegistryDep,
    settings: SettingsDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobsPublic:
    """Jobs, newest first."""
    jobs, total = registry.page(offset, limit)
    return JobsPublic(data=jobs, count=len(jobs), total=total)


@router.get("/{job_id}", responses=NOT_FOUND)
def get_job(job_id: str, registry: RegistryDep) -> JobPublic:
    """One job's record: status, progress, result."""
    return registry.get(job_id)


@router.post("/{job_id}/cancel", responses={**NOT_FOUND, 409: {"model": Message}})
def cancel_job(job_id: str, registry: RegistryDep) -> JobPublic:
    """Cancel a job: queued ones at once, running ones within a step."""
    return registry.request_cancel(job_id)


@router.get("/{job_id}/metrics", responses=NOT_FOUND)
def job_metrics(
    job_id: str,
    registry: RegistryDep,
    events: EventsDep,
    kind: Annotated[EventKind | None, Query()] = None,
    after: Annotated[str | None, Query(pattern=r"^\d+-\d+$")] = None,
) -> JobEventsPublic:
    """The job's event history (metrics, checkpoints, samples, status), oldest first."""
    registry.get(job_id)
    found = [e for e in events.read(job_id, after=after) if kind is None or e.kind == kind]
    return JobEventsPublic(data=found, count=len(found))


@router.get("/{job_id}/artifacts", responses=NOT_FOUND)
def job_artifacts(
    job_id: str, registry: RegistryDep, store: StoreDep, settings: SettingsDep
) -> ArtifactsPublic:
    """The job's objects in storage, each with a presigned GET URL."""
    registry.get(job_id)
    expires = timedelta(seconds=settings.PRESIGN_EXPIRY_S)
    found = [
        ArtifactPublic(key=o.key, size=o.size, url=store.url(o.key, expires))
        for o in store.list_prefix(JobKeys(job_id).prefix)
    ]
    return ArtifactsPublic(data=found, count=len(found))
