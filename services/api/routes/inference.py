"""Using a trained model: samples from a GAN job, predictions of a classifier job, and the poll
URL of an answer that took longer than INFERENCE_WAIT_S (services/api/inference.py)."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from services.api import inference
from services.api.deps import JobIdDep, PrincipalDep, get_principal, services
from services.api.errors import ERROR_RESPONSES, ApiProblem
from services.api.limits import MULTIPART
from shared.schemas import (
    CHECKPOINT_PATTERN,
    Checkpoint,
    ErrorResponse,
    InferencePending,
    PredictionsPublic,
    SampleRequest,
    SamplesPublic,
)
from shared.state.inference import REQUEST_ID

router = APIRouter(
    tags=["inference"], responses=ERROR_RESPONSES, dependencies=[Depends(get_principal)]
)

PENDING: dict[str, Any] = {
    "model": InferencePending,
    "description": "The inference worker has not answered within INFERENCE_WAIT_S: poll the "
    "URL in `poll` (and in Location)",
    "headers": {"Location": {"description": "The poll URL", "schema": {"type": "string"}}},
}
TIMED_OUT: dict[str, Any] = {
    "model": ErrorResponse,
    "description": "No inference worker answered within INFERENCE_TIMEOUT_S of the request "
    "(none running, or it died): retry",
}
REFUSED: dict[int | str, dict[str, Any]] = {
    404: {
        "model": ErrorResponse,
        "description": "Unknown job, another owner's, or a checkpoint it does not have "
        "(`field: checkpoint`)",
    },
    409: {"model": ErrorResponse, "description": "The job has not succeeded"},
}
# The multipart form POST /v1/jobs/{id}/predict takes; the route reads it itself (as
# POST /v1/datasets does), its size capped by limits.RequestGuard at PREDICT_MAX_BYTES.
FILE_PART = {
    "type": "string",
    "contentMediaType": "application/octet-stream",
    "description": "One PNG or JPEG, or an .npz holding one uint8 array (N, C, H, W) or "
    "(N, H, W) of the job's data set's shape, N <= INFERENCE_MAX_IMAGES",
}
FORM_SCHEMA = {
    "type": "object",
    "required": ["file"],
    "properties": {"file": FILE_PART},
    "additionalProperties": False,
}
PREDICT_FORM: dict[str, Any] = {
    "requestBody": {"required": True, "content": {MULTIPART: {"schema": FORM_SCHEMA}}}
}
TEXT_FIELD_MAX_BYTES = 1024


def _checkpoint(text: str) -> Checkpoint:
    """The query's checkpoint (CHECKPOINT_PATTERN): "best", "final" or a step."""
    if text == "best":
        return "best"
    return "final" if text == "final" else int(text)


def _answer(response: Response, found: inference.Answer) -> inference.Answer:
    if isinstance(found, InferencePending):
        response.status_code = 202
        response.headers["Location"] = found.poll
    return found


@router.post(
    "/v1/jobs/{job_id}/samples",
    response_model=None,  # 200 or 202, each documented below
    responses={
        200: {"model": SamplesPublic, "description": "Stored under samples-on-demand/"},
        202: PENDING,
        **REFUSED,
        504: TIMED_OUT,
        422: {
            "model": ErrorResponse,
            "description": "A bad field; a classifier job (`field: job_id`); labels on an "
            "unconditional GAN or out of range (`field: labels`)",
        },
    },
)
async def draw_samples(
    job_id: JobIdDep,
    body: Annotated[SampleRequest, Body()],
    request: Request,
    response: Response,
    principal: PrincipalDep,
) -> inference.Answer:
    """Draw `n` images from a succeeded GAN job's generator (its `checkpoint`: final, best or
    a kept step), seeded by `seed`: the same request gives the same images. A PNG grid and
    an .npz of the images (uint8, N x C x H x W, with their labels) are stored among the
    job's artifacts under samples-on-demand/ and answered with presigned URLs."""
    found = await inference.samples(services(request), job_id, principal, body)
    return _answer(response, found)


@router.post(
    "/v1/jobs/{job_id}/predict",
    openapi_extra=PREDICT_FORM,
    response_model=None,
    responses={
        200: {"model": PredictionsPublic, "description": "One row per image"},
        202: PENDING,
        **REFUSED,
        413: {
            "model": ErrorResponse,
            "description": "A body over PREDICT_MAX_BYTES; images decoding to more than "
            "PREDICT_DECODED_MAX_BYTES (`field: file`, read from the headers)",
        },
        422: {
            "model": ErrorResponse,
            "description": "A GAN job (`field: job_id`); a file that is not images of the "
            "job's shape (`field: file`)",
        },
        503: {
            "model": ErrorResponse,
            "description": "PREDICT_PARSE_CONCURRENCY predict bodies are being read already; "
            "retry after Retry-After seconds",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        },
        504: TIMED_OUT,
    },
)
async def predict(
    job_id: JobIdDep,
    request: Request,
    response: Response,
    principal: PrincipalDep,
    checkpoint: Annotated[
        str,
        Query(
            pattern=CHECKPOINT_PATTERN,
            description='"final" (default), "best" or a step with a kept checkpoint',
        ),
    ] = "final",
) -> inference.Answer:
    """Classify one image (PNG or JPEG, normalised as uploads are, then resized with LANCZOS
    to the data set's size) or an .npz batch with a succeeded classifier job. The answer has
    each image's class probabilities (the book's Sigmoid scores normalised to sum 1) and the
    most probable class. The body is read only after the job checks, in one of
    PREDICT_PARSE_CONCURRENCY slots (503 with Retry-After when none frees up in time)."""
    chosen, read = _checkpoint(checkpoint), partial(_read_file, request)
    found = await inference.predict(services(request), job_id, principal, chosen, read)
    return _answer(response, found)


async def _read_file(request: Request) -> tuple[str, bytes]:
    """The multipart form's one part, `file`: (its file name, its bytes). A form Starlette
    cannot take (two files, a field too long) is a 400 naming `file`."""
    try:
        form = await request.form(max_files=1, max_fields=1, max_part_size=TEXT_FIELD_MAX_BYTES)
    except HTTPException as exc:
        raise ApiProblem(
            400, f"file: {exc.detail}; send one multipart field `file`", "file"
        ) from exc
    try:
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise ApiProblem(422, "file: one file is required (multipart field `file`)", "file")
        extra = sorted(set(form.keys()) - {"file"})
        if extra:
            raise ApiProblem(
                422, f"unknown form field {extra[0][:40]!r}; the form has `file` only", "file"
            )
        return part.filename or "", await part.read()
    finally:
        await form.close()


@router.get(
    "/v1/inference/{request_id}",
    response_model=None,
    responses={
        200: {
            "model": SamplesPublic | PredictionsPublic,
            "description": "The answer the request would have given",
        },
        202: {"model": InferencePending, "description": "Still pending"},
        404: {"model": ErrorResponse, "description": "Unknown, expired or another owner's"},
        504: TIMED_OUT,
    },
)
async def poll_inference(
    request_id: Annotated[
        str, Path(pattern=REQUEST_ID, description="From a 202: 32 lowercase hex digits")
    ],
    request: Request,
    response: Response,
    principal: PrincipalDep,
) -> SamplesPublic | PredictionsPublic | InferencePending:
    """A samples or predict request's answer: 200 with the body the request would have
    given, 202 while pending, or the request's error (as the API would have said it; a 5xx
    only when the inference worker failed, a 504 when none answered within
    INFERENCE_TIMEOUT_S)."""
    found = await inference.poll(services(request), request_id, principal)
    return _answer(response, found)
