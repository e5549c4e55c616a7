"""Submitting a job: check it fits its data, plan its memory, store it with its broker message
(and Idempotency-Key) in one step. POST /v1/jobs calls submit()."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, NoReturn

from fastapi.exceptions import RequestValidationError

from services.api.deps import Services
from services.api.errors import ApiProblem
from services.api.metrics import JOBS_SUBMITTED
from services.api.pending import public_job
from services.api.planner import ApiPlanner
from shared.broker import training_message
from shared.catalog import DatasetCatalog, DatasetNotFound
from shared.planning import NoClassFits, ProbeRateLimited, Routing
from shared.schemas import JobPublic, JobSpec
from shared.state.jobs import Idempotency
from shared.state.records import IdempotencyConflict, QueueFull, new_job_id
from shared.zoo import BUILTIN_DATASETS, MODELS, DatasetInfo, fit_problem


async def submit(
    app: Services,
    spec: JobSpec,
    owner: str,
    idempotency_key: str | None,
    tags: dict[str, Any] | None = None,
) -> tuple[JobPublic, bool]:
    """Queue `spec` for `owner`; returns the job and whether it is a replay of an earlier
    submission with the same Idempotency-Key (and body). `tags`: record fields a sweep's
    trial carries (sweep_id, trial; services/api/sweeps.py).

    Errors (as API problems): 422 for an unknown data set, a model that cannot take its
    images, or a job no memory class can hold; 429 past MAX_QUEUED_PER_OWNER queued jobs or
    PLAN_PROBES_PER_MINUTE new probes; 409 for a key used with another body."""
    settings, registry = app.settings, app.registry
    info = await check_fits(spec, app.catalog, owner)
    routing = await _plan(app.planner, spec, info, owner)
    job_id = new_job_id()
    queue = routing.queue or settings.QUEUE
    if routing.planning:  # no class, so no message yet: the planner routes it
        await app.planner.add_waiting(routing.planning, job_id)
    idempotency = None
    if idempotency_key is not None:
        digest = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()
        idempotency = Idempotency(idempotency_key, digest, settings.IDEMPOTENCY_TTL_S)
    try:
        created = await registry.acreate(
            spec,
            owner,
            job_id,
            settings.MAX_QUEUED_PER_OWNER,
            message=None
            if routing.planning
            else (queue, training_message(app.celery, job_id, queue)),
            idempotency=idempotency,
            memory_class=routing.memory_class,
            queue=routing.queue,
            predicted_peak_cpu_bytes=routing.cpu_bytes,
            predicted_peak_gpu_bytes=routing.gpu_bytes,
            planning=routing.planning,
            **(tags or {}),
        )
    except QueueFull as exc:
        raise ApiProblem(429, str(exc), headers={"Retry-After": "30"}) from exc
    except IdempotencyConflict as exc:
        raise ApiProblem(
            409, str(exc), field="Idempotency-Key", code="idempotency_conflict"
        ) from exc
    if created.replayed:
        return JobPublic.from_record(created.record), True
    JOBS_SUBMITTED.labels(task=spec.task).inc()
    if not routing.planning:
        return JobPublic.from_record(created.record), False
    if await app.planner.asettle_if_probed(routing.planning, job_id):
        job = await registry.aget(job_id)  # its probe ended meanwhile: routed or failed
        return JobPublic.from_record(job), False
    return await public_job(created.record, registry, app.workers), False  # says why it waits


async def _plan(planner: ApiPlanner, spec: JobSpec, info: DatasetInfo, owner: str) -> Routing:
    """The job's routing (see ApiPlanner.aplan): 422 when no class can run it, 429 past the
    owner's PLAN_PROBES_PER_MINUTE."""
    try:
        return await planner.aplan(spec, info.image, info.num_classes, owner)
    except NoClassFits as exc:
        raise RequestValidationError(
            [{"type": "memory", "msg": str(exc), "loc": ("body", spec.task, exc.field)}]
        ) from exc
    except ProbeRateLimited as exc:
        raise ApiProblem(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from exc


async def check_fits(spec: JobSpec, catalog: DatasetCatalog, owner: str) -> DatasetInfo:
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
