"""/v1/jobs: submit, list, read, cancel, follow and fetch the artifacts of training jobs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any, NoReturn

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from services.api.deps import (
    AsyncRedisDep,
    EventsDep,
    JobIdDep,
    PrincipalDep,
    RegistryDep,
    SettingsDep,
    StoreDep,
    get_principal,
    services,
)
from services.api.errors import ERROR_RESPONSES, ApiProblem
from services.api.metrics import JOBS_SUBMITTED
from shared.broker import training_message
from shared.catalog import DatasetCatalog, DatasetNotFound
from shared.config import Settings
from shared.events import ascan, decode_entry
from shared.jobs import CURSOR, InvalidCursor, JobRegistry, QueueFull, _text, new_job_id
from shared.planning import NoClassFits, Planner, ProbeRateLimited, Routing
from shared.schemas import (
    ArtifactPublic,
    ArtifactsPublic,
    ErrorResponse,
    EventKind,
    JobEvent,
    JobEventsPublic,
    JobPublic,
    JobSpec,
    JobsPublic,
)
from shared.status import JobStatus
from shared.storage import ArtifactNotFound, JobKeys
from shared.workers import pending_info
from shared.zoo import BUILTIN_DATASETS, MODELS, DatasetInfo, fit_problem

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
    app = services(request)  # a hot path: its clients without a dependency each
    registry, settings = app.registry, app.settings
    info = await _check_fits(spec, app.catalog, principal.owner)
    routing = await _plan(app.planner, spec, info, principal.owner)
    job_id = new_job_id()
    if idempotency_key is not None:
        replay = await _claim_key(
            registry, principal.owner, idempotency_key, spec, job_id, settings
        )
        if replay is not None:
            response.status_code = status.HTTP_200_OK
            return replay
    queue = routing.queue or settings.QUEUE
    message = (queue, training_message(app.celery, job_id, queue))  # enqueued atomically
    if routing.planning:  # no class yet, so no message: the planner routes it (see Planner)
        await app.planner.await_probe(routing.planning, job_id)
    try:
        job = await registry.acreate(
            spec,
            principal.owner,
            job_id,
            settings.MAX_QUEUED_PER_OWNER,
            message=None if routing.planning else message,
            memory_class=routing.memory_class,
            queue=routing.queue,
            predicted_peak_cpu_bytes=routing.cpu_bytes,
            predicted_peak_gpu_bytes=routing.gpu_bytes,
            planning=routing.planning,
        )
    except QueueFull as exc:
        if idempotency_key is not None:
            key = registry.keys.idempotency(principal.owner, idempotency_key)
            await registry.aredis.delete(key)
        raise ApiProblem(429, str(exc), headers={"Retry-After": "30"}) from exc
    JOBS_SUBMITTED.labels(task=spec.task).inc()
    if routing.planning:
        if await app.planner.asettle_if_probed(routing.planning, job_id):
            return await registry.aget(job_id)  # its probe ended meanwhile: routed or failed
        job.pending = await pending_info(job, registry, app.workers)
    return job


async def _plan(planner: Planner, spec: JobSpec, info: DatasetInfo, owner: str) -> Routing:
    """The job's routing (see Planner.aplan): 422 when no class can run it, 429 past the
    owner's PLAN_PROBES_PER_MINUTE."""
    try:
        return await planner.aplan(spec, info.image, info.num_classes, owner)
    except NoClassFits as exc:
        raise RequestValidationError(
            [{"type": "memory", "msg": str(exc), "loc": ("body", spec.task, exc.field)}]
        ) from exc
    except ProbeRateLimited as exc:
        raise ApiProblem(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from exc


async def _claim_key(
    registry: JobRegistry, owner: str, key: str, spec: JobSpec, job_id: str, settings: Settings
) -> JobPublic | None:
    """Record key -> (body digest, job id) unless already recorded. Returns the existing job
    for a replay of the same body; 409 for another body under the same key. `key` matches
    IDEMPOTENCY_KEY (the header's declared pattern)."""
    digest = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()
    redis_key = registry.keys.idempotency(owner, key)
    mine = json.dumps({"digest": digest, "job_id": job_id})
    if await registry.aredis.set(redis_key, mine, nx=True, ex=settings.IDEMPOTENCY_TTL_S):
        return None
    stored = json.loads(await registry.aredis.get(redis_key) or mine)
    if stored["digest"] != digest:
        raise ApiProblem(
            409,
            "this Idempotency-Key was used with a different job spec",
            field="Idempotency-Key",
            code="idempotency_conflict",
        )
    for _ in range(50):  # the first request may still be creating it
        try:
            return await registry.aget(stored["job_id"])
        except KeyError:
            await asyncio.sleep(0.05)
    raise ApiProblem(
        409,
        "the first request with this Idempotency-Key did not complete; retry with a new key",
        field="Idempotency-Key",
        code="idempotency_conflict",
    )


async def _check_fits(spec: JobSpec, catalog: DatasetCatalog, owner: str) -> DatasetInfo:
    """The data set's shape; 422 when it is unknown or the model cannot take its images
    (e.g. book_conv_gan on 28x28 without resize)."""
    info = BUILTIN_DATASETS.get(spec.dataset)
    try:
        if info is None:  # an upload: its record is in Redis
            info = await asyncio.to_thread(catalog.info, spec.dataset, owner)
    except DatasetNotFound as exc:
        _invalid(spec, "dataset", f"{exc}: upload it first (POST /v1/datasets)")
    problem = fit_problem(MODELS[spec.model], info, spec.crop_hw(), spec.resize_hw())
    if problem is not None:
        _invalid(spec, *problem)
    return info


def _invalid(spec: JobSpec, field: str, why: str) -> NoReturn:
    raise RequestValidationError(
        [{"type": "model_data_mismatch", "msg": why, "loc": ("body", spec.task, field)}]
    )


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
    return JobsPublic(data=jobs, count=len(jobs), next_cursor=next_cursor)


@router.get("/{job_id}")
async def get_job(request: Request, job_id: JobIdDep, principal: PrincipalDep) -> JobPublic:
    """One job: status, progress, result; a queued job says why it waits."""
    app = services(request)  # a hot path: its clients without a dependency each
    job = await app.registry.aget_for(job_id, principal)
    if job.status is JobStatus.QUEUED:
        job.pending = await pending_info(job, app.registry, app.workers)
    return job


@router.post("/{job_id}/cancel")
def cancel_job(
    job_id: JobIdDep, principal: PrincipalDep, registry: RegistryDep, events: EventsDep
) -> JobPublic:
    """Cancel: a queued job at once, a running one at its next step (409 if finished)."""
    registry.get_for(job_id, principal)
    job = registry.request_cancel(job_id)
    if job.status is JobStatus.CANCELLED:
        _status_event(events, job_id, JobStatus.CANCELLED, "cancelled while queued", job.attempts)
    return job


@router.get("/{job_id}/metrics")
def job_metrics(
    job_id: JobIdDep,
    principal: PrincipalDep,
    registry: RegistryDep,
    events: EventsDep,
    kind: Annotated[EventKind | None, Query()] = None,
    after: Annotated[str | None, Query(pattern=STREAM_ID)] = None,
) -> JobEventsPublic:
    """The job's event history (metrics, checkpoints, samples, status), oldest first, each
    step once: after a restart, what the lost attempt logged past the checkpoint its successor
    resumed from is left out (the `rewind` events say where; every event has its `attempt`).
    `kind` filters strictly: a reader that polls with `after` and a kind also asks for
    `kind=rewind`, or it cannot drop what it holds past a rewind."""
    registry.get_for(job_id, principal)
    found = [e for e in events.history(job_id, after=after) if kind is None or e.kind == kind]
    return JobEventsPublic(data=found, count=len(found))


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
    aredis: AsyncRedisDep,
    registry: RegistryDep,
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
    await asyncio.to_thread(registry.get_for, job_id, principal)
    key = registry.keys.events(job_id)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        last = last_event_id or "0-0"
        history = await ascan(aredis, key, after=last)
        while not await request.is_disconnected():
            reply: Any = await aredis.xread({key: last}, block=1000, count=200)
            for entry_id, fields in reply[0][1] if reply else []:
                event = decode_entry(entry_id, fields)
                last = event.id or last
                if not history.passes(event):
                    continue
                yield ServerSentEvent(data=event.model_dump_json(), id=last, event=event.kind)
                if _is_terminal(event):
                    return
            if not reply and await _finished_and_drained(aredis, registry, job_id, key, last):
                return

    return EventSourceResponse(stream(), ping=settings.SSE_PING_S)


def _is_terminal(event: JobEvent) -> bool:
    return event.kind == "status" and event.info.get("status") in {
        s.value for s in JobStatus if s.is_terminal()
    }


async def _finished_and_drained(
    aredis: AsyncRedisDep, registry: JobRegistry, job_id: str, key: str, last: str
) -> bool:
    # A job that ended without a status event in the stream (none is lost today, but the
    # stream is capped): stop once it is terminal and nothing is left to send.
    state = await aredis.hget(registry.keys.job(job_id), "status")
    if state is None or not JobStatus(_text(state)).is_terminal():
        return False
    newer = await aredis.xrange(key, min=f"({last}", max="+", count=1)
    return not newer


@router.get("/{job_id}/artifacts")
def job_artifacts(
    job_id: JobIdDep,
    principal: PrincipalDep,
    registry: RegistryDep,
    store: StoreDep,
    settings: SettingsDep,
) -> ArtifactsPublic:
    """The job's objects in storage, each with a presigned GET URL (valid PRESIGN_EXPIRY_S)."""
    registry.get_for(job_id, principal)
    expires = timedelta(seconds=settings.PRESIGN_EXPIRY_S)
    prefix = JobKeys(job_id).prefix
    found = [
        ArtifactPublic(
            key=o.key, path=o.key.removeprefix(prefix), size=o.size, url=store.url(o.key, expires)
        )
        for o in store.list_prefix(prefix)
    ]
    return ArtifactsPublic(data=found, count=len(found))


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
    principal: PrincipalDep,
    registry: RegistryDep,
    store: StoreDep,
) -> StreamingResponse:
    """One artifact streamed through the API, for clients that cannot reach object storage.
    `path` is relative to the job (e.g. final/model.pt)."""
    registry.get_for(job_id, principal)
    try:
        chunks, size, content_type = store.open(JobKeys(job_id).prefix + path)
    except ArtifactNotFound as exc:
        raise ApiProblem(404, f"job {job_id} has no artifact {path!r}") from exc
    filename = path.rsplit("/", 1)[-1]
    return StreamingResponse(
        chunks,
        media_type=content_type,
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{filename}"',
        },
    )


def _status_event(
    events: EventsDep, job_id: str, state: JobStatus, reason: str, attempt: int = 0
) -> None:
    """A status event written by the API; `attempt`: the job's attempts so far."""
    info = {"status": state.value, "reason": reason}
    event = JobEvent(kind="status", time=time.time(), attempt=attempt, info=info)
    events.publish(job_id, [event])
