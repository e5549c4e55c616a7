"""/v1/jobs: submit, list, read, cancel, follow and fetch the artifacts of training jobs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from services.api import reads
from services.api.deps import (
    EventsDep,
    JobIdDep,
    PrincipalDep,
    RegistryDep,
    SettingsDep,
    get_principal,
    services,
)
from services.api.errors import ERROR_RESPONSES, ApiProblem
from services.api.submit import submit
from shared.schemas import (
    ArtifactsPublic,
    ErrorResponse,
    EventKind,
    JobEventsPublic,
    JobPublic,
    JobSpec,
    JobsPublic,
)
from shared.state.records import CURSOR, InvalidCursor
from shared.status import JobStatus

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    responses=ERROR_RESPONSES,
    dependencies=[Depends(get_principal)],
)

# Every path, query and header parameter is validated by a pattern or bounds declared in the
# OpenAPI document (a 422 naming it otherwise), before a route touches Redis or S3.
# A Redis stream id, "<ms>-<seq>", each part a 64-bit unsigned number: 19 digits at most keeps
# every accepted id below 2**64 (a longer one was a Redis error, so a 500). [0-9], not \d:
# \d matches any Unicode digit ("٣"), which Redis refuses.
STREAM_ID = r"^[0-9]{1,19}-[0-9]{1,19}$"
# Part of a Redis key ({prefix}:idem:{owner}:{key}): printable ASCII, no spaces.
IDEMPOTENCY_KEY = r"^[\x21-\x7e]{1,200}$"
# Relative to the job's prefix: segments of [A-Za-z0-9._-] that do not start with a dot (no
# "." or "..", no hidden names), separated by single slashes.
ARTIFACT_PATH = r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$"
# What the workers store (workers/trainer): checkpoints and models, JSON reports, sample
# grids, the memory summary. The download answers with the object's stored content type.
ARTIFACT_TYPES = ("application/octet-stream", "application/json", "image/png", "text/plain")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": JobPublic, "description": "Replay of an Idempotency-Key"},
        201: {
            "model": JobPublic,
            "description": "Queued. Routed to a memory class that holds it (`memory_class`, "
            "predicted peaks); or, when its model and data shape are new and the planner's "
            "probe takes longer than PLAN_WAIT_S, accepted while being planned: no "
            "`memory_class` yet and `pending.reason` starts with `being planned`. Such a "
            "job is routed when the probe ends, or moves to `failed` with the message a "
            "422 would have given (a `status` event records either).",
        },
        422: {
            "model": ErrorResponse,
            "description": "A bad field; a model that does not fit its data; no memory class "
            "serves its device (`field: device`, decided without a probe) or can hold it "
            "(`field: batch_size`, with the numbers)",
        },
        429: {
            "model": ErrorResponse,
            "description": "MAX_QUEUED_PER_OWNER queued jobs already, or more than "
            "PLAN_PROBES_PER_MINUTE new model/data shapes to probe this minute (Retry-After)",
        },
    },
)
async def submit_job(
    spec: Annotated[JobSpec, Body()],
    request: Request,
    response: Response,
    principal: PrincipalDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            pattern=IDEMPOTENCY_KEY,
            description="Retry-safe submission: the same key and body return the same job; "
            "1-200 printable ASCII characters, no spaces",
        ),
    ] = None,
) -> JobPublic:
    """Queue a training job (201); a replayed Idempotency-Key returns the same job (200).
    Its peak memory is predicted first and it is routed to a worker class that can hold it;
    a job no configured class can hold is a 422 with the numbers. A model and data shape
    the planner has not measured yet may take longer than PLAN_WAIT_S: the job is then
    accepted `queued`, being planned (see the 201), and later routed, or failed with the
    message the 422 would have given."""
    job, replayed = await submit(services(request), spec, principal.owner, idempotency_key)
    if replayed:
        response.status_code = status.HTTP_200_OK
    return job


@router.get("")
def list_jobs(
    principal: PrincipalDep,
    registry: RegistryDep,
    cursor: Annotated[
        str | None,
        Query(pattern=CURSOR, description="next_cursor of the previous page: <score>-<job id>"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    task: Annotated[str | None, Query(pattern="^(classifier|gan|cgan)$")] = None,
) -> JobsPublic:
    """Your jobs (an admin's: everyone's), newest first, optionally by status and task."""
    try:
        jobs, next_cursor = registry.page(principal, cursor, limit, status_, task)
    except InvalidCursor as exc:
        raise ApiProblem(400, str(exc), field="cursor") from exc
    data = [JobPublic.from_record(job) for job in jobs]
    return JobsPublic(data=data, count=len(data), next_cursor=next_cursor)


@router.get("/{job_id}")
async def get_job(request: Request, job_id: JobIdDep, principal: PrincipalDep) -> JobPublic:
    """One job: status, progress, result; a queued job says why it waits."""
    return await reads.job(services(request), job_id, principal)  # a hot path: no dependencies


@router.post("/{job_id}/cancel")
def cancel_job(job_id: JobIdDep, principal: PrincipalDep, registry: RegistryDep) -> JobPublic:
    """Cancel: a queued job at once, a running one at its next step (409 if finished)."""
    return JobPublic.from_record(registry.request_cancel(job_id, principal))


@router.get("/{job_id}/metrics")
def job_metrics(
    job_id: JobIdDep,
    request: Request,
    principal: PrincipalDep,
    kind: Annotated[EventKind | None, Query()] = None,
    after: Annotated[str | None, Query(pattern=STREAM_ID)] = None,
) -> JobEventsPublic:
    """The job's event history (metrics, checkpoints, samples, status), oldest first, each
    step once: after a restart, what the lost attempt logged past the checkpoint its successor
    resumed from is left out (the `rewind` events say where; every event has its `attempt`).
    `kind` filters strictly: a reader that polls with `after` and a kind also asks for
    `kind=rewind`, or it cannot drop what it holds past a rewind."""
    return reads.history(services(request), job_id, principal, kind, after)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-Sent Events: one per kept stream entry",
        }
    },
)
async def job_events(
    job_id: JobIdDep,
    request: Request,
    principal: PrincipalDep,
    registry: RegistryDep,
    events: EventsDep,
    settings: SettingsDep,
    last_event_id: Annotated[
        str | None,
        Header(
            pattern=STREAM_ID,
            description="Resume after this event (its `id`: a stream id)",
            examples=["1700000000000-0"],
        ),
    ] = None,
) -> EventSourceResponse:
    """Live events as SSE, from the start or after `Last-Event-ID` (a stream id); closes
    after the job's terminal status event. The history so far comes as /metrics gives it;
    after that, a `rewind` event (a restarted job) tells the client to drop what it has past
    the rewind's step."""
    await registry.aget_for(job_id, principal)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        sent = 0
        async for event in events.follow(job_id, after=last_event_id):
            if (event is None or sent % 200 == 0) and await request.is_disconnected():
                return
            if event is not None:
                sent += 1
                yield ServerSentEvent(data=event.model_dump_json(), id=event.id, event=event.kind)

    return EventSourceResponse(stream(), ping=settings.SSE_PING_S)


@router.get("/{job_id}/artifacts")
def job_artifacts(job_id: JobIdDep, request: Request, principal: PrincipalDep) -> ArtifactsPublic:
    """The job's objects in storage, each with a presigned GET URL (valid PRESIGN_EXPIRY_S)."""
    return reads.artifacts(services(request), job_id, principal)


@router.get(
    "/{job_id}/artifacts/{path:path}",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {t: {} for t in ARTIFACT_TYPES},
            "description": "The object's bytes, with the content type it was stored with",
        }
    },
)
def download_artifact(
    job_id: JobIdDep,
    path: Annotated[
        str,
        Path(
            pattern=ARTIFACT_PATH,
            max_length=512,
            description="Relative to the job, e.g. final/model.pt (no '..', no leading dot)",
        ),
    ],
    request: Request,
    principal: PrincipalDep,
) -> StreamingResponse:
    """One artifact streamed through the API, for clients that cannot reach object storage.
    `path` is relative to the job (e.g. final/model.pt)."""
    found = reads.open_artifact(services(request), job_id, principal, path)
    return StreamingResponse(
        found.chunks,
        media_type=found.content_type,
        headers={
            "Content-Length": str(found.size),
            "Content-Disposition": f'attachment; filename="{found.filename}"',
        },
    )
