"""The stored job record, how it is written to and read from a Redis hash, job ids and page
cursors.

JobRecord is internal: workers and the reconciler read it, and the API turns it into its
public model with JobPublic.from_record(). Fields only the system needs (`fence`,
`checkpoint_step`, `planning`) are not in the public model."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from shared.schemas import (
    CganSpec,
    ClassifierSpec,
    GanSpec,
    HealthWarning,
    JobEvent,
    JobSpec,
    JobSpecAdapter,
)
from shared.state.keys import text
from shared.status import JobStatus

# A job id: 16 lowercase hex digits (new_job_id). The API validates path ids against it.
JOB_ID = r"^[0-9a-f]{16}$"
# A page cursor: "<score>-<job id>", the last job returned and its index score (microseconds).
# Every string of this form is a valid cursor, so the API can document it as a pattern.
CURSOR = r"^[0-9]{1,19}-[0-9a-f]{16}$"
# Events are capped per stream so a job that logs every step for days cannot fill Redis
# (which runs with noeviction).
MAX_EVENTS = 100_000


class JobRecord(BaseModel):
    """A job as Redis stores it (one hash, `RedisKeys.job`). Times are UTC."""

    id: str
    owner: str = ""
    status: JobStatus
    spec: JobSpec
    # lifecycle
    created_at: datetime
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0  # worker starts
    requeues: int = 0  # graceful hand-backs: they do not count against MAX_ATTEMPTS
    worker: str | None = None  # the newest lease holder
    fence: int | None = None  # that lease's fencing number
    cancel_requested: bool = False
    error: str | None = None
    # sweeps (shared/sweeps.py): the sweep a trial belongs to and its trial number
    sweep_id: str | None = None
    trial: int | None = None
    warnings: list[HealthWarning] = []  # written by the lease holder with the warning's event
    result: dict[str, Any] | None = None
    # routing (shared/planning.py)
    planning: str | None = None  # the plan key it waits on, while its probe runs
    queue: str | None = None
    memory_class: str | None = None
    predicted_peak_cpu_bytes: int | None = None
    predicted_peak_gpu_bytes: int | None = None
    micro_batch_size: int | None = None  # set after an out-of-memory requeue
    measured_peak_bytes: int | None = None
    memory_prediction_error: float | None = None
    # progress, written by the lease holder
    total_steps: int | None = None
    epoch: int = 0
    step: int = 0
    checkpoint_step: int | None = None  # the newest committed checkpoint

    @property
    def batch(self) -> int:
        """The micro-batch a run uses: micro_batch_size after an OOM, else the spec's batch."""
        return self.micro_batch_size or self.spec.batch_size


class JobNotFound(KeyError):
    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"no job {self.job_id!r}"


class QueueFull(RuntimeError):
    def __init__(self, owner: str, queued: int, cap: int) -> None:
        super().__init__(
            f"{owner} already has {queued} queued jobs (the limit is {cap}); "
            "wait for some to start or cancel them"
        )
        self.owner, self.queued, self.cap = owner, queued, cap


class IdempotencyConflict(ValueError):
    """An Idempotency-Key already used with a different job spec."""

    def __init__(self) -> None:
        super().__init__("this Idempotency-Key was used with a different job spec")


class InvalidCursor(ValueError):
    def __init__(self, cursor: str) -> None:
        super().__init__(f"cursor {cursor!r} is not one this API returned")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


def status_event(attempt: int = 0, /, **info: Any) -> JobEvent:
    """A `status` event to pass to a state move (JobRegistry.transition and friends), which
    fills in info["status"]. `attempt`: the attempt it concerns (0 before any start); `info`:
    why (reason, error, worker...), None values left out."""
    kept = {k: v for k, v in info.items() if v is not None}
    return JobEvent(kind="status", time=time.time(), attempt=attempt, info=kept)


def event_payload(event: JobEvent, status: JobStatus | None = None) -> str:
    """The stream entry of `event` (JSON, no id); with `status`, as a status event of it."""
    if status is not None:
        event = event.model_copy(update={"info": {"status": status.value, **event.info}})
    return event.model_dump_json(exclude={"id"})


def encode(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dict | list):
        return json.dumps(value)
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return str(value)


def flatten(fields: dict[str, Any]) -> list[str]:
    """[field, value, ...] for HSET, values encoded; None values left out."""
    flat: list[str] = []
    for key, value in fields.items():
        if value is not None:
            flat += [key, encode(value)]
    return flat


_JSON_FIELDS = ("result", "warnings")
SPEC_CLASSES: dict[str, type[ClassifierSpec | GanSpec | CganSpec]] = {
    "classifier": ClassifierSpec,
    "gan": GanSpec,
    "cgan": CganSpec,
}
log = logging.getLogger(__name__)


def decode(raw: dict[Any, Any]) -> JobRecord:
    """A record from HGETALL's reply (fields left empty count as unset)."""
    data: dict[str, Any] = {text(k): text(v) for k, v in raw.items()}
    for key in _JSON_FIELDS:
        if key in data:
            data[key] = json.loads(data[key])
    data["spec"] = stored_spec(data["spec"])
    data["cancel_requested"] = data.get("cancel_requested") == "1"
    return JobRecord.model_validate({k: v for k, v in data.items() if v != ""})


def stored_spec(raw: str) -> JobSpec:
    """A stored job's spec. Specs are validated on the way in; one stored under rules tightened
    since (a job name with a control character, say) is read as it was stored, unvalidated,
    instead of failing every list and page that holds its job."""
    try:
        return JobSpecAdapter.validate_json(raw)
    except ValidationError as exc:
        fields = json.loads(raw)
        spec_class = SPEC_CLASSES[fields["task"]]
        log.warning("a stored spec fails today's checks, read as stored: %s", exc)
        return spec_class.model_construct(**fields)


def score(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000)  # microseconds: exact in a double, sorts by time


def make_cursor(score: float, job_id: str) -> str:
    return f"{int(score)}-{job_id}"


def read_cursor(cursor: str | None) -> tuple[float | str, str | None]:
    """(highest score to read, id already returned at that score); InvalidCursor unless it
    matches CURSOR."""
    if not cursor:
        return "+inf", None
    if not re.fullmatch(CURSOR, cursor):
        raise InvalidCursor(cursor)
    top, job_id = cursor.split("-", 1)
    return int(top), job_id


def seen(job_id: str, at: float, top: Any, after_id: str | None) -> bool:
    """Members sharing the cursor's score come in descending id order: skip up to the cursor."""
    return after_id is not None and at == top and job_id >= after_id
