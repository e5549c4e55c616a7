"""What the job routes that read answer: a job, its kept event history, its artifacts. Each
function checks that the caller may see the job first (JobNotFound otherwise: ids do not
leak), so a route makes one call."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from services.api.deps import Services
from services.api.errors import ApiProblem
from services.api.pending import public_job
from shared.auth import Principal
from shared.schemas import (
    ArtifactPublic,
    ArtifactsPublic,
    EventKind,
    JobEventsPublic,
    JobPublic,
)
from shared.storage import ArtifactNotFound, JobKeys


async def job(app: Services, job_id: str, principal: Principal) -> JobPublic:
    """The job as the API shows it: a queued one says why it waits."""
    return await public_job(
        await app.registry.aget_for(job_id, principal), app.registry, app.workers
    )


def history(
    app: Services, job_id: str, principal: Principal, kind: EventKind | None, after: str | None
) -> JobEventsPublic:
    """The job's kept event history (EventStream.history) after stream id `after`, only events
    of `kind` if given."""
    app.registry.get_for(job_id, principal)
    found = [e for e in app.events.history(job_id, after=after) if kind is None or e.kind == kind]
    return JobEventsPublic(data=found, count=len(found))


def artifacts(app: Services, job_id: str, principal: Principal) -> ArtifactsPublic:
    """The job's objects in storage, each with a presigned GET URL valid PRESIGN_EXPIRY_S."""
    app.registry.get_for(job_id, principal)
    expires = timedelta(seconds=app.settings.PRESIGN_EXPIRY_S)
    prefix = JobKeys(job_id).prefix
    found = [
        ArtifactPublic(
            key=o.key,
            path=o.key.removeprefix(prefix),
            size=o.size,
            url=app.store.url(o.key, expires),
        )
        for o in app.store.list_prefix(prefix)
    ]
    return ArtifactsPublic(data=found, count=len(found))


@dataclass(frozen=True)
class Download:
    chunks: Iterator[bytes]
    size: int  # bytes
    content_type: str
    filename: str


def open_artifact(app: Services, job_id: str, principal: Principal, path: str) -> Download:
    """One artifact's bytes; `path` is relative to the job (e.g. final/model.pt). 404 when
    the job has no such object."""
    app.registry.get_for(job_id, principal)
    try:
        chunks, size, content_type = app.store.open(JobKeys(job_id).prefix + path)
    except ArtifactNotFound as exc:
        raise ApiProblem(404, f"job {job_id} has no artifact {path!r}") from exc
    return Download(chunks, size, content_type, path.rsplit("/", 1)[-1])
