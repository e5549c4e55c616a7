"""The Redis job registry: create, read, list, and move jobs between states atomically."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from redis import Redis

from shared.schemas import JobPublic, JobSpec, JobSpecAdapter
from shared.status import IllegalTransition, JobStatus, sources_of


class JobNotFound(KeyError):
    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"no job {self.job_id!r}"


def utcnow() -> datetime:
    return datetime.now(UTC)


class RedisKeys:
    """Every Redis key trainyard uses, built in one place."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def jobs_by_time(self) -> str:
        return f"{self.prefix}:jobs"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    def control(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:control"

    def datasets(self) -> str:
        return f"{self.prefix}:datasets"


# Move a job to ARGV[1] if its current status is one of the allowed sources, and set fields,
# all in one atomic step so two writers cannot both win.
# ARGV: target, n_sources, sources..., field, value, field, value...
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {'missing', ''} end
local n = tonumber(ARGV[2])
for i = 3, 2 + n do
  if ARGV[i] == cur then
    local fields = {'status', ARGV[1]}
    for j = 3 + n, #ARGV do fields[#fields + 1] = ARGV[j] end
    redis.call('HSET', KEYS[1], unpack(fields))
    return {'ok', cur}
  end
end
return {'illegal', cur}
"""

_JSON_FIELDS = ("spec", "result")


def _encode(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


class JobRegistry:
    """Job records as Redis hashes, plus a sorted set for newest-first listing."""

    def __init__(self, redis: Redis, prefix: str = "trainyard") -> None:
        self.redis = redis
        self.keys = RedisKeys(prefix)
        self._transition = redis.register_script(_TRANSITION)

    def create(self, spec: JobSpec) -> JobPublic:
        """Store a new queued job and return its record."""
        now = utcnow()
        job = JobPublic(
            id=uuid.uuid4().hex[:16], status=JobStatus.QUEUED, spec=spec, created_at=now
        )
        fields = {
            "id": job.id,
            "status": job.status.value,
            "spec": spec.model_dump(mode="json"),
            "created_at": now,
            "attempts": 0,
            "step": 0,
            "epoch": 0,
            "cancel_requested": False,
        }
        pipe = self.redis.pipeline()
        pipe.hset(self.keys.job(job.id), mapping={k: _encode(v) for k, v in fields.items()})
        pipe.zadd(self.keys.jobs_by_time(), {job.id: now.timestamp()})
        pipe.execute()
        return job

    def get(self, job_id: str) -> JobPublic:
        """The job's record; JobNotFound if there is none."""
        raw = self.redis.hgetall(self.keys.job(job_id))
        if not raw:
            raise JobNotFound(job_id)
        return self._decode(raw)

    def page(self, offset: int = 0, limit: int = 50) -> tuple[list[JobPublic], int]:
        """A page of jobs, newest first, and the total count."""
        ids = self.redis.zrevrange(self.keys.jobs_by_time(), offset, offset + limit - 1)
        pipe = self.redis.pipeline()
        for job_id in ids:
            pipe.hgetall(self.keys.job(_text(job_id)))
        records = [self._decode(raw) for raw in pipe.execute() if raw]
        return records, int(self.redis.zcard(self.keys.jobs_by_time()))

    def transition(self, job_id: str, target: JobStatus, **fields: Any) -> JobStatus:
        """Move the job to `target` and set `fields` atomically; returns the previous status.

        Raises JobNotFound, or IllegalTransition when the current state does not allow it."""
        sources = [s.value for s in sources_of(target)]
        if target.is_terminal():
            fields.setdefault("finished_at", utcnow())
        flat: list[str] = []
        for key, value in fields.items():
            flat += [key, _encode(value)]
        outcome, current = self._transition(
            keys=[self.keys.job(job_id)], args=[target.value, len(sources), *sources, *flat]
        )
        if _text(outcome) == "missing":
            raise JobNotFound(job_id)
        if _text(outcome) == "illegal":
            raise IllegalTransition(JobStatus(_text(current)), target)
        return JobStatus(_text(current))

    def update(self, job_id: str, **fields: Any) -> None:
        """Set non-status fields (progress, worker...) on an existing job."""
        self.redis.hset(self.keys.job(job_id), mapping={k: _encode(v) for k, v in fields.items()})

    def request_cancel(self, job_id: str) -> JobPublic:
        """Cancel a job: a queued one at once, a running one cooperatively (the loop stops)."""
        job = self.get(job_id)
        if job.status is JobStatus.QUEUED:
            try:
                self.transition(job_id, JobStatus.CANCELLED, cancel_requested=True)
                return self.get(job_id)
            except IllegalTransition:
                job = self.get(job_id)  # a worker took it meanwhile: cancel it cooperatively
        if job.status.is_terminal():
            raise IllegalTransition(job.status, JobStatus.CANCELLED)
        pipe = self.redis.pipeline()
        pipe.hset(self.keys.job(job_id), "cancel_requested", "1")
        pipe.publish(self.keys.control(job_id), "cancel")
        pipe.execute()
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        return _text(self.redis.hget(self.keys.job(job_id), "cancel_requested")) == "1"

    @staticmethod
    def _decode(raw: dict[Any, Any]) -> JobPublic:
        data: dict[str, Any] = {_text(k): _text(v) for k, v in raw.items()}
        for key in _JSON_FIELDS:
            if key in data:
                data[key] = json.loads(data[key])
        data["spec"] = JobSpecAdapter.validate_python(data["spec"])
        data["cancel_requested"] = data.get("cancel_requested") == "1"
        return JobPublic.model_validate({k: v for k, v in data.items() if v != ""})


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
