"""The per-job lease with fencing: a worker trains a job only while it holds the job's lease.

The lease is a Redis key holding a token "{fence}:{worker}" with an expiry the worker keeps
renewing (workers/trainer/job.py, LeaseKeeper). The fence number grows with every
acquisition, and every write a worker makes (status, progress, events, checkpoint commits)
checks its token atomically in a Lua script, so a stale or duplicate worker can neither run
at the same time as the owner nor overwrite newer state. Each job keeps a log of its leases
(acquired, dropped duplicates, released, reclaimed)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis import Redis

from shared.state import scripts
from shared.state.keys import RedisKeys, text
from shared.state.records import MAX_EVENTS, event_payload, status_event, utcnow
from shared.status import TERMINAL, JobStatus


class LeaseLost(RuntimeError):
    """This worker no longer holds the job's lease: another worker owns the job now."""


@dataclass(frozen=True)
class Lease:
    job_id: str
    token: str  # "{fence}:{worker}"
    fence: int
    attempt: int  # 1 for the first start


@dataclass(frozen=True)
class Acquired:
    """The outcome of trying to take a job: `lease` is set only when this worker got it."""

    outcome: str  # ok | held | finished | exhausted | missing
    lease: Lease | None = None
    detail: str = ""  # held: the holder; finished: the status; exhausted: the attempts


class Leases:
    """Acquire, renew, check and reclaim job leases (made by JobRegistry: `registry.leases`)."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self.redis, self.keys = redis, keys
        self._acquire = redis.register_script(scripts.ACQUIRE)
        self._renew = redis.register_script(scripts.RENEW)
        self._reclaim = redis.register_script(scripts.RECLAIM)

    def acquire(self, job_id: str, worker: str, ttl_s: float, max_attempts: int) -> Acquired:
        """Take the job's lease and mark it running (with its `running` status event), if
        nobody holds it and fewer than `max_attempts` attempts were used."""
        k = self.keys
        # The script fills in the attempt and fence it decides on (see scripts.ACQUIRE).
        event = json.loads(
            event_payload(
                status_event(worker=worker, attempt="@attempt", fence="@fence"),
                JobStatus.RUNNING,
            )
        )
        event["attempt"] = "@attempt"
        reply = self._acquire(
            keys=[
                k.job(job_id),
                k.lease(job_id),
                k.fence(job_id),
                k.lease_log(job_id),
                k.script_prefix(),
                k.events(job_id),
            ],
            args=[
                worker,
                int(ttl_s * 1000),
                max_attempts,
                utcnow().isoformat(),
                json.dumps(event, separators=(", ", ": ")),
                MAX_EVENTS,
                *(s.value for s in TERMINAL),
            ],
        )
        outcome, *rest = [text(r) for r in reply]
        if outcome != "ok":
            return Acquired(outcome, detail=rest[0] if rest else "")
        token, fence, attempt = rest
        return Acquired("ok", Lease(job_id, token, int(fence), int(attempt)))

    def renew(self, lease: Lease, ttl_s: float) -> bool:
        """Extend the lease by `ttl_s`; False when it is no longer ours."""
        return bool(
            self._renew(keys=[self.keys.lease(lease.job_id)], args=[lease.token, int(ttl_s * 1000)])
        )

    def holder(self, job_id: str) -> str | None:
        """The token of the lease on the job now, if any."""
        value = self.redis.get(self.keys.lease(job_id))
        return None if value is None else text(value)

    def check(self, lease: Lease) -> None:
        """LeaseLost unless `lease` is still the job's lease."""
        if self.holder(lease.job_id) != lease.token:
            raise LeaseLost(f"job {lease.job_id}: lease {lease.token} is no longer held")

    def log(self, job_id: str, event: str, **info: Any) -> None:
        """Add an entry (`event`: released, ...) to the job's lease log."""
        self.redis.xadd(
            self.keys.lease_log(job_id),
            {"event": event, "time": utcnow().isoformat(), **{k: str(v) for k, v in info.items()}},
            maxlen=1000,
            approximate=True,
        )

    def history(self, job_id: str) -> list[dict[str, str]]:
        """The job's lease log: acquisitions, dropped duplicates, releases, reclaims."""
        entries: Any = self.redis.xrange(self.keys.lease_log(job_id))
        return [{text(k): text(v) for k, v in fields.items()} for _, fields in entries]

    def reclaim(self, job_id: str, event: str) -> bool:
        """Requeue a running job whose lease expired, appending `event` (a status event's
        stream entry); True if it was. Called through JobRegistry.reclaim."""
        k = self.keys
        return bool(
            self._reclaim(
                keys=[
                    k.job(job_id),
                    k.lease(job_id),
                    k.lease_log(job_id),
                    k.script_prefix(),
                    k.events(job_id),
                ],
                args=[utcnow().isoformat(), event, MAX_EVENTS],
            )
        )
