"""/v1/sweeps: submit, list, read and cancel sweeps; each trial is an ordinary job
(docs/sweeps.md). The work is in services/api/sweeps.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response, status

from services.api.deps import PrincipalDep, get_principal
from services.api.errors import ERROR_RESPONSES
from services.api.routes.jobs import IDEMPOTENCY_KEY
from services.api.sweeps import Sweeps
from shared.schemas import SWEEP_ID, ErrorResponse, SweepPublic, SweepSpec, SweepsPublic

router = APIRouter(
    prefix="/v1/sweeps",
    tags=["sweeps"],
    responses=ERROR_RESPONSES,
    dependencies=[Depends(get_principal)],
)

SweepIdDep = Annotated[
    str, Path(pattern=SWEEP_ID, description="A sweep id: sw- and 16 lowercase hex digits")
]


def sweeps(request: Request) -> Sweeps:
    found: Sweeps = request.app.state.sweeps
    return found


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": SweepPublic, "description": "Replay of an Idempotency-Key"},
        201: {
            "model": SweepPublic,
            "description": "Created; its first trials are queued (up to `parallel`, as room "
            "in the owner's queue allows: `waiting` says why no more are)",
        },
        409: {"model": ErrorResponse, "description": "An Idempotency-Key used with another body"},
        422: {
            "model": ErrorResponse,
            "description": "A bad field: `base.<field>` (as POST /v1/jobs would say), "
            "`space.<name>` (not a job spec field, or a point of the space that is not a "
            "valid job spec), `n_trials` past TRAINYARD_SWEEP_MAX_TRIALS",
        },
    },
)
async def submit_sweep(
    spec: Annotated[SweepSpec, Body()],
    request: Request,
    response: Response,
    principal: PrincipalDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            pattern=IDEMPOTENCY_KEY,
            description="Retry-safe submission: the same key and body return the same sweep; "
            "1-200 printable ASCII characters, no spaces",
        ),
    ] = None,
) -> SweepPublic:
    """Start a sweep: `n_trials` jobs, each `base` with the parameters Optuna draws from
    `space`, optimising `metric`; trials count against the owner's queue cap as they are
    queued, and wait for room when it is full."""
    sweep, replayed = await sweeps(request).create(spec, principal, idempotency_key)
    if replayed:
        response.status_code = status.HTTP_200_OK
    return sweep


@router.get("")
async def list_sweeps(
    request: Request,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> SweepsPublic:
    """Your sweeps (an admin's: everyone's), newest first."""
    return await sweeps(request).list(principal, limit)


@router.get("/{sweep_id}")
async def get_sweep(request: Request, sweep_id: SweepIdDep, principal: PrincipalDep) -> SweepPublic:
    """One sweep: its status, trials by status, the best trial so far and every trial's
    parameters, status and value."""
    return await sweeps(request).show(sweep_id, principal)


@router.post("/{sweep_id}/cancel", responses={409: {"model": ErrorResponse}})
async def cancel_sweep(
    request: Request, sweep_id: SweepIdDep, principal: PrincipalDep
) -> SweepPublic:
    """Cancel: no more trials are asked; every trial not finished is cancelled as a job is
    (409 if the sweep has ended or was cancelled)."""
    return await sweeps(request).cancel(sweep_id, principal)
