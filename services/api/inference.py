"""The API's side of inference: check a samples or predict request, hand it to the inference
worker (workers/inference/) through Redis and its own queue, and wait a little for the answer.

Everything that can be refused without torch is refused here, before anything is queued or
stored: an unknown job or another owner's (404), a job of the other task (422 naming
`job_id`), a job not `succeeded` (409), a checkpoint the job does not have (404 naming
`checkpoint`: a HEAD of its object), labels on an unconditional GAN or out of range (422
naming `labels`), an input that is not images of the job's shape (422 naming `file`, see
shared/uploads/predict.py). The worker answers what only the model can tell.

A predict body is read and decoded inside one of PREDICT_PARSE_CONCURRENCY parse slots
(shared/uploads/slots.py, as uploads are): taken after the job checks, before any body byte is
read, given back once the images are stored; none free within UPLOAD_PARSE_WAIT_S is a 503
with Retry-After. Its decoded size (N x C x H x W, from the headers) is at most
PREDICT_DECODED_MAX_BYTES (413 naming `file`).

A request waits at most INFERENCE_WAIT_S for its answer; past it the answer is a 202 with the
URL to poll (GET /v1/inference/{request_id}), which gives the same answer once the worker has
given it, for INFERENCE_RESULT_TTL_S. A request no worker has answered INFERENCE_TIMEOUT_S
after it was queued (no inference worker running, or it died) is a 504, on the wait and on the
poll, and stays one: a worker that comes later finds it answered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from services.api.deps import Services
from services.api.errors import ApiProblem
from services.api.metrics import INFERENCE_REQUESTS, INFERENCE_SECONDS
from shared.auth import Principal
from shared.broker import INFER_TASK, inference_queue
from shared.catalog import DatasetNotFound
from shared.config import Settings
from shared.schemas import (
    ArtifactLink,
    Checkpoint,
    ImagesLink,
    InferencePending,
    PredictionsPublic,
    SampleRequest,
    SamplesPublic,
)
from shared.state.inference import InferenceAnswer, InferenceKind, InferenceRequest, new_request_id
from shared.state.records import JobNotFound, JobRecord
from shared.status import JobStatus
from shared.storage import JobKeys
from shared.uploads import DatasetError
from shared.uploads.predict import parse_predict_input
from shared.uploads.slots import ParseSlots
from shared.zoo import BUILTIN_DATASETS, DatasetInfo

Answer = SamplesPublic | PredictionsPublic | InferencePending
# Reads a predict request's multipart body: (file name, file bytes); ApiProblem when malformed.
ReadFile = Callable[[], Awaitable[tuple[str, bytes]]]
POLL_PATH = "/v1/inference/{request_id}"
FIRST_POLL_S, LAST_POLL_S = 0.005, 0.05  # how often a request looks for its answer


async def samples(app: Services, job_id: str, principal: Principal, body: SampleRequest) -> Answer:
    """POST /v1/jobs/{id}/samples; see the module docstring."""
    return await _counted("samples", _samples(app, job_id, principal, body))


async def predict(
    app: Services, job_id: str, principal: Principal, checkpoint: Checkpoint, read: ReadFile
) -> Answer:
    """POST /v1/jobs/{id}/predict. `read` reads the body (at most PREDICT_MAX_BYTES, the
    RequestGuard's cap); it is called only once the job checks pass and a parse slot is held."""
    return await _counted("predict", _predict(app, job_id, principal, checkpoint, read))


def predict_slots(settings: Settings) -> ParseSlots:
    """The API process's predict parse slots (Services.predict_slots)."""
    return ParseSlots(
        settings.PREDICT_PARSE_CONCURRENCY,
        settings.UPLOAD_PARSE_WAIT_S,
        "predict requests",
        "TRAINYARD_PREDICT_PARSE_CONCURRENCY",
    )


async def poll(app: Services, request_id: str, principal: Principal) -> Answer:
    """GET /v1/inference/{request_id}: the answer, a 202 while pending, a 504 once pending
    past INFERENCE_TIMEOUT_S; 404 when unknown, expired or another owner's."""
    found = await app.inference.aget(request_id)
    if found is None or not principal.can_see(found[0].owner):
        raise ApiProblem(404, f"no inference request {request_id} (unknown, or expired)")
    request, answer = found
    if answer is None:
        answer = await _timed_out(app, request)
    if answer is None:
        return _pending(request.id)
    return _public(app, request, answer)


# --- samples and predict


async def _samples(app: Services, job_id: str, principal: Principal, body: SampleRequest) -> Answer:
    most = app.settings.INFERENCE_MAX_IMAGES
    if body.n > most:
        raise ApiProblem(422, f"n: {body.n} images; at most {most} per request", field="n")
    record = await _job(app, job_id, principal, "samples")
    info = await _dataset(app, record)
    conditional = record.spec.task == "cgan"
    if body.labels is not None and not conditional:
        raise ApiProblem(
            422,
            f"labels: job {job_id} is an unconditional GAN ({record.spec.model}); labels are "
            "for cgan jobs",
            field="labels",
        )
    k = info.num_classes
    bad = next((label for label in body.labels or [] if label >= k), None)
    if bad is not None:
        raise ApiProblem(
            422,
            f"labels: {bad} is out of range; job {job_id}'s data set has {k} classes "
            f"(labels 0..{k - 1})",
            field="labels",
        )
    await _check_checkpoint(app, record, body.checkpoint)
    params = {
        "n": body.n,
        "labels": body.label_list(k if conditional else 0),
        "seed": body.seed,
        "checkpoint": body.checkpoint,
        "final_step": _final_step(record),
    }
    return await _ask(app, principal, record, "samples", params, None)


async def _predict(
    app: Services, job_id: str, principal: Principal, checkpoint: Checkpoint, read: ReadFile
) -> Answer:
    record = await _job(app, job_id, principal, "predict")
    info = await _dataset(app, record)
    await _check_checkpoint(app, record, checkpoint)
    s = app.settings
    try:
        async with app.predict_slots.hold():  # 503 before any body byte when all are taken
            filename, data = await read()
            images: np.ndarray = await run_in_threadpool(
                parse_predict_input,
                filename,
                data,
                info.image,
                s.INFERENCE_MAX_IMAGES,
                s.PREDICT_MAX_BYTES,
                s.PREDICT_DECODED_MAX_BYTES,
            )
            del data
            params = {
                "checkpoint": checkpoint,
                "final_step": _final_step(record),
                "shape": list(images.shape),
            }
            request = await _store(app, principal, record, "predict", params, images.tobytes())
    except DatasetError as exc:
        retry = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
        raise ApiProblem(exc.status, str(exc), field=exc.field, headers=retry) from exc
    return await _queue_and_wait(app, request)


async def _job(app: Services, job_id: str, principal: Principal, kind: InferenceKind) -> JobRecord:
    """The job, if the caller may see it (404), of the right task (422 naming `job_id`) and
    succeeded (409)."""
    record = await app.registry.aget_for(job_id, principal)
    task = record.spec.task
    if kind == "samples" and task == "classifier":
        raise ApiProblem(
            422,
            f"job_id: job {job_id} trained a classifier; samples come from gan and cgan jobs "
            "(POST /v1/jobs/{id}/predict classifies images)",
            field="job_id",
        )
    if kind == "predict" and task != "classifier":
        raise ApiProblem(
            422,
            f"job_id: job {job_id} trained a {task}; predict takes classifier jobs "
            "(POST /v1/jobs/{id}/samples draws images from a GAN)",
            field="job_id",
        )
    if record.status != JobStatus.SUCCEEDED:
        raise ApiProblem(
            409, f"job {job_id} is {record.status.value}; only a succeeded job has a model to use"
        )
    return record


async def _dataset(app: Services, record: JobRecord) -> DatasetInfo:
    found = BUILTIN_DATASETS.get(record.spec.dataset)
    if found is not None:
        return found
    return await asyncio.to_thread(app.catalog.info_any, record.spec.dataset)


def checkpoint_key(job_id: str, checkpoint: Checkpoint) -> str:
    """The object holding the weights of `checkpoint`."""
    keys = JobKeys(job_id)
    if checkpoint == "final":
        return keys.final_model
    if checkpoint == "best":
        return keys.best_model
    return keys.checkpoint(int(checkpoint))


async def _check_checkpoint(app: Services, record: JobRecord, checkpoint: Checkpoint) -> None:
    """404 naming `checkpoint` when the job has no such object (a HEAD: nothing is read)."""
    key = checkpoint_key(record.id, checkpoint)
    if await asyncio.to_thread(app.store.exists, key):
        return
    if checkpoint == "best":
        why = "no best checkpoint (final/best.pt): none of its steps was scored"
    elif checkpoint == "final":
        why = "no final/model.pt"
    else:
        why = f"no checkpoint of step {checkpoint} (checkpoints/step-N.pt; older ones are pruned)"
    raise ApiProblem(404, f"checkpoint: job {record.id} has {why}", field="checkpoint")


def _final_step(record: JobRecord) -> int:
    """The step of final/model.pt: the summary's step count, else the last progress step."""
    steps = (record.result or {}).get("steps")
    return int(steps) if isinstance(steps, int) else record.step


# --- the trip to the worker


async def _ask(
    app: Services,
    principal: Principal,
    record: JobRecord,
    kind: InferenceKind,
    params: dict[str, Any],
    images: bytes | None,
) -> Answer:
    """Store the request, queue it for the inference worker, and wait for its answer."""
    request = await _store(app, principal, record, kind, params, images)
    return await _queue_and_wait(app, request)


async def _store(
    app: Services,
    principal: Principal,
    record: JobRecord,
    kind: InferenceKind,
    params: dict[str, Any],
    images: bytes | None,
) -> InferenceRequest:
    """The request (and a predict request's image bytes) in Redis, stamped `queued_at`."""
    request = InferenceRequest(
        id=new_request_id(), owner=principal.owner, job_id=record.id, kind=kind, params=params
    )
    await app.inference.acreate(request, images)
    return request


async def _queue_and_wait(app: Services, request: InferenceRequest) -> Answer:
    """Queue a stored request for the inference worker and wait INFERENCE_WAIT_S (at most
    INFERENCE_TIMEOUT_S) for its answer: the answer, a 202 to poll, or the 504 of a request
    no worker answered in time."""
    started = time.monotonic()
    try:
        await asyncio.to_thread(
            app.celery.send_task,
            INFER_TASK,
            args=[request.id],
            queue=inference_queue(app.settings.QUEUE),
        )
    except Exception:
        await app.inference.adrop(request.id)
        raise
    budget = min(app.settings.INFERENCE_WAIT_S, app.settings.INFERENCE_TIMEOUT_S)
    answer = await _await(app, request.id, budget) or await _timed_out(app, request)
    if answer is None:
        return _pending(request.id)
    if answer.status == 200:
        INFERENCE_SECONDS.labels(request.kind).observe(time.monotonic() - started)
    return _public(app, request, answer)


async def _await(app: Services, request_id: str, budget_s: float) -> InferenceAnswer | None:
    """The answer if it comes within `budget_s`, looked for every 5 ms at first, then less
    often (up to every 50 ms)."""
    started, pause = time.monotonic(), FIRST_POLL_S
    while (found := await app.inference.aanswer(request_id)) is None:
        left = budget_s - (time.monotonic() - started)
        if left <= 0:
            return None
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, LAST_POLL_S)
    return found


async def _timed_out(app: Services, request: InferenceRequest) -> InferenceAnswer | None:
    """For a request still unanswered: None while it is within INFERENCE_TIMEOUT_S of
    `queued_at`; past it, the 504 stored as its answer (once; the answer that stands if a
    worker answered meanwhile)."""
    timeout = app.settings.INFERENCE_TIMEOUT_S
    if time.time() - request.queued_at < timeout:
        return None
    late = InferenceAnswer(
        status=504,
        message=f"no inference worker answered within {timeout:g} s; is one running? "
        f"(TRAINYARD_WORKER_ROLE=inference, queue {inference_queue(app.settings.QUEUE)}) "
        "retry",
    )
    found = await app.inference.atime_out(request.id, late)
    if found is None:  # expired meanwhile (INFERENCE_RESULT_TTL_S under the timeout)
        raise ApiProblem(404, f"no inference request {request.id} (unknown, or expired)")
    return found


def _pending(request_id: str) -> InferencePending:
    return InferencePending(request_id=request_id, poll=POLL_PATH.format(request_id=request_id))


def _public(app: Services, request: InferenceRequest, answer: InferenceAnswer) -> Answer:
    """The worker's answer as the API gives it: its error as the one error shape, a samples
    result with fresh presigned URLs."""
    if answer.status != 200 or answer.result is None:
        message = answer.message or "the inference worker failed without a message"
        raise ApiProblem(answer.status if answer.status >= 400 else 500, message, answer.field)
    result = answer.result
    if request.kind == "predict":
        return PredictionsPublic.model_validate({**result, "job_id": request.job_id})
    expires = timedelta(seconds=app.settings.PRESIGN_EXPIRY_S)
    prefix = JobKeys(request.job_id).prefix

    def link(key: str) -> dict[str, str]:
        return {"key": key, "path": key.removeprefix(prefix), "url": app.store.url(key, expires)}

    return SamplesPublic(
        job_id=request.job_id,
        checkpoint=result["checkpoint"],
        step=result["step"],
        seed=result["seed"],
        n=result["n"],
        labels=result["labels"],
        grid=ArtifactLink(**link(result["grid_key"])),
        images=ImagesLink.model_validate({**link(result["images_key"]), "shape": result["shape"]}),
    )


async def _counted(kind: InferenceKind, work: Any) -> Answer:
    """Count the request by kind and outcome: answered, pending (202), refused (4xx and the
    503 of no parse slot), timed_out (504: no inference worker answered), failed (5xx)."""
    try:
        answer: Answer = await work
    except (HTTPException, JobNotFound, DatasetNotFound) as exc:
        # HTTPException: ApiProblem, and Starlette's 400 for a malformed multipart form
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        if status == 504:
            outcome = "timed_out"
        elif status >= 500 and status != 503:
            outcome = "failed"
        else:
            outcome = "refused"
        INFERENCE_REQUESTS.labels(kind, outcome).inc()
        raise
    except Exception:
        INFERENCE_REQUESTS.labels(kind, "failed").inc()
        raise
    outcome = "pending" if isinstance(answer, InferencePending) else "answered"
    INFERENCE_REQUESTS.labels(kind, outcome).inc()
    return answer
