"""JobRegistry: the owner of job records in Redis.

It creates jobs (with their broker message and Idempotency-Key in the same script), reads and
pages them, moves them between states (each move appends its `status` event atomically, see
scripts.py), cancels them, and answers the questions the API and the reconciler ask about
them. Leases (who trains a job now) are `registry.leases` (leases.py)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from shared.auth import Principal
from shared.schemas import JobEvent, JobSpec
from shared.state import scripts
from shared.state.keys import RedisKeys, text
from shared.state.leases import Lease, LeaseLost, Leases
from shared.state.records import (
    MAX_EVENTS,
    IdempotencyConflict,
    JobNotFound,
    JobRecord,
    QueueFull,
    decode,
    event_payload,
    flatten,
    make_cursor,
    new_job_id,
    read_cursor,
    score,
    seen,
    status_event,
    utcnow,
)
from shared.status import IllegalTransition, JobStatus, sources_of


@dataclass(frozen=True)
class Idempotency:
    """An Idempotency-Key for acreate(): `digest` identifies the body; kept for `ttl_s`."""

    key: str
    digest: str
    ttl_s: int


@dataclass(frozen=True)
class Created:
    record: JobRecord
    replayed: bool  # an Idempotency-Key seen before: the first submission's job


@dataclass(frozen=True)
class ActiveJob:
    """What the reconciler needs of a queued or running job."""

    id: str
    status: JobStatus
    queue: str | None
    since: datetime  # entered its queue (or was created)
    planning: str | None
    attempts: int  # worker starts so far


Signal = Literal["cancel", "shutdown"]


class JobRegistry:
    """Job records as Redis hashes, a sorted set for newest-first listing, per-queue indexes
    for places in line; `leases` for the workers. The API passes an asyncio client (`aredis`)
    for its hot paths (submit, read)."""

    DURATIONS_CACHE_S = 5.0  # how stale arecent_durations() may be: it only feeds ETAs

    def __init__(
        self, redis: Redis, prefix: str = "trainyard", aredis: AsyncRedis | None = None
    ) -> None:
        self.redis = redis
        self.keys = RedisKeys(prefix)
        self.leases = Leases(redis, self.keys)
        self._aredis = aredis
        self._acreate = aredis.register_script(scripts.CREATE) if aredis is not None else None
        self._create = redis.register_script(scripts.CREATE)
        self._transition = redis.register_script(scripts.TRANSITION)
        self._settle_planned = redis.register_script(scripts.SETTLE_PLANNED)
        self._resent = redis.register_script(scripts.RESENT)
        self._fenced_hset = redis.register_script(scripts.FENCED_HSET)
        self._durations: tuple[float, list[float]] = (-1e9, [])

    @property
    def aredis(self) -> AsyncRedis:
        assert self._aredis is not None, "JobRegistry was made without an asyncio client"
        return self._aredis

    def ping(self) -> bool:
        return bool(self.redis.ping())

    # --- create

    def _new(
        self,
        spec: JobSpec,
        owner: str,
        job_id: str | None,
        max_queued: int | None,
        message: tuple[str, str] | None,
        idempotency: Idempotency | None,
        extra: dict[str, Any],
    ) -> tuple[JobRecord, list[str], list[Any]]:
        """A new job's record, and the CREATE script's keys and arguments that store it."""
        now = utcnow()
        job = JobRecord(
            id=job_id or new_job_id(),
            owner=owner,
            status=JobStatus.QUEUED,
            spec=spec,
            created_at=now,
            enqueued_at=now,
            **{k: v for k, v in extra.items() if v is not None},
        )
        k = self.keys
        keys = [
            k.job(job.id),
            k.jobs_by_time(),
            k.owner_jobs(owner),
            k.active(),
            k.owner_active(owner),
            k.stats(),
            k.owner_queued(owner),
            k.script_prefix(),
            message[0] if message else k.no_queue(),
            k.idempotency(owner, idempotency.key) if idempotency else k.no_queue(),
            k.events(job.id),
        ]
        idem = (
            [idempotency.ttl_s, json.dumps({"digest": idempotency.digest, "job_id": job.id})]
            if idempotency
            else [0, ""]
        )
        reason = "being planned" if job.planning else "submitted"
        event = event_payload(status_event(reason=reason), JobStatus.QUEUED)
        fields = job.model_dump(exclude_none=True, exclude={"checkpoint_step"})
        args = [
            job.id,
            score(now),
            max_queued or 0,
            message[1] if message else "",
            *idem,
            event,
            MAX_EVENTS,
            *flatten(fields),
        ]
        return job, keys, args

    def create(
        self,
        spec: JobSpec,
        owner: str,
        job_id: str | None = None,
        max_queued: int | None = None,
        message: tuple[str, str] | None = None,
        **extra: Any,
    ) -> JobRecord:
        """Store a new queued job for `owner`, with its first `status` event, and return its
        record; QueueFull when the owner already has `max_queued` queued jobs (checked and
        created atomically). `message` (broker queue, payload) is pushed in the same step:
        see shared.broker.training_message. `extra`: routing fields (queue, memory_class,
        predicted_peak_*_bytes, planning)."""
        job, keys, args = self._new(spec, owner, job_id, max_queued, message, None, extra)
        _created(job, self._create(keys=keys, args=args), max_queued)
        return job

    async def acreate(
        self,
        spec: JobSpec,
        owner: str,
        job_id: str | None = None,
        max_queued: int | None = None,
        message: tuple[str, str] | None = None,
        idempotency: Idempotency | None = None,
        **extra: Any,
    ) -> Created:
        """create() on the asyncio client, with an optional Idempotency-Key claimed in the
        same script: a key seen before returns the first submission's job (`replayed`), or
        raises IdempotencyConflict when that one had another body (digest)."""
        assert self._acreate is not None, "JobRegistry was made without an asyncio client"
        job, keys, args = self._new(spec, owner, job_id, max_queued, message, idempotency, extra)
        reply = await self._acreate(keys=keys, args=args)
        if text(reply[0]) == "replay":
            assert idempotency is not None
            stored = json.loads(reply[1])
            if stored["digest"] != idempotency.digest:
                raise IdempotencyConflict()
            return Created(await self.aget(stored["job_id"]), replayed=True)
        _created(job, reply, max_queued)
        return Created(job, replayed=False)

    # --- read

    def get(self, job_id: str) -> JobRecord:
        """The job's record; JobNotFound if there is none."""
        return _found(job_id, self.redis.hgetall(self.keys.job(job_id)))

    async def aget(self, job_id: str) -> JobRecord:
        """get() on the asyncio client."""
        return _found(job_id, await self.aredis.hgetall(self.keys.job(job_id)))

    def get_for(self, job_id: str, principal: Principal) -> JobRecord:
        """The job, if `principal` may see it; JobNotFound otherwise (ids do not leak)."""
        return _visible(self.get(job_id), principal)

    async def aget_for(self, job_id: str, principal: Principal) -> JobRecord:
        """get_for() on the asyncio client."""
        return _visible(await self.aget(job_id), principal)

    def cancel_requested(self, job_id: str) -> bool:
        return self.redis.hget(self.keys.job(job_id), "cancel_requested") == b"1"

    def page(
        self,
        principal: Principal,
        cursor: str | None = None,
        limit: int = 50,
        status: JobStatus | None = None,
        task: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        """Newest-first jobs the principal may see (admins: everyone's), filtered, after
        `cursor`; returns the page and the cursor of the next one (None at the end).
        InvalidCursor for a cursor this API did not return."""
        index = (
            self.keys.jobs_by_time() if principal.admin else self.keys.owner_jobs(principal.owner)
        )
        top: Any
        top, after_id = read_cursor(cursor)
        found: list[JobRecord] = []
        chunk = max(limit * 2, 50)
        while len(found) < limit:
            entries: Any = self.redis.zrevrangebyscore(
                index, top, "-inf", start=0, num=chunk, withscores=True
            )
            fresh = [(text(m), s) for m, s in entries if not seen(text(m), s, top, after_id)]
            if not fresh:
                return found, None
            pipe = self.redis.pipeline()
            for job_id, _ in fresh:
                pipe.hgetall(self.keys.job(job_id))
            for (job_id, at), raw in zip(fresh, pipe.execute(), strict=True):
                top, after_id = at, job_id
                if not raw:
                    continue
                job = decode(raw)
                if (status is None or job.status is status) and (
                    task is None or job.spec.task == task
                ):
                    found.append(job)
                    if len(found) == limit:
                        return found, make_cursor(at, job_id)
        return found, None

    def active(self) -> list[ActiveJob]:
        """Queued and running jobs (a record that vanished leaves the active set here)."""
        members = [text(m) for m in self.redis.smembers(self.keys.active())]
        pipe = self.redis.pipeline(transaction=False)
        for key in members:
            pipe.hmget(key, "status", "queue", "enqueued_at", "created_at", "planning", "attempts")
        found = []
        prefix = self.keys.job("")
        for key, values in zip(members, pipe.execute(), strict=True):
            status, queue, enqueued, created, planning, attempts = (
                None if v is None else text(v) for v in values
            )
            if status is None:
                self.redis.srem(self.keys.active(), key)
                continue
            since = datetime.fromisoformat(enqueued or created or utcnow().isoformat())
            job_id = key.removeprefix(prefix)
            found.append(
                ActiveJob(job_id, JobStatus(status), queue, since, planning, int(attempts or 0))
            )
        return found

    def stats(self) -> dict[str, int]:
        """Counters since the start of this Redis: `submitted`, `finished:{status}`."""
        return {text(k): int(v) for k, v in self.redis.hgetall(self.keys.stats()).items()}

    def queue_position(self, job: JobRecord) -> int | None:
        """1 for the next queued job of its queue to be taken; None when it is not queued."""
        rank: Any = self.redis.zrank(self.keys.queued(job.queue), job.id)
        return None if rank is None else int(rank) + 1

    async def aqueue_position(self, job: JobRecord) -> int | None:
        """queue_position() on the asyncio client."""
        rank: Any = await self.aredis.zrank(self.keys.queued(job.queue), job.id)
        return None if rank is None else int(rank) + 1

    def recent(self, *fields: str, sample: int = 50) -> list[list[str | None]]:
        """`fields` of the `sample` newest jobs, newest first (None where unset)."""
        pipe = self.redis.pipeline()
        for job_id in self.redis.zrevrange(self.keys.jobs_by_time(), 0, sample - 1):
            pipe.hmget(self.keys.job(text(job_id)), *fields)
        return _rows(pipe.execute())

    async def arecent_durations(self, sample: int = 50) -> list[float]:
        """Run times in seconds of the succeeded jobs among the `sample` newest. Once there are
        any, the answer is reused for DURATIONS_CACHE_S: every read of a queued job asks (the
        dashboard's list reads each queued job it shows), and their median moves slowly."""
        taken, found = self._durations
        if found and time.monotonic() - taken < self.DURATIONS_CACHE_S:
            return found
        pipe = self.aredis.pipeline()
        for job_id in await self.aredis.zrevrange(self.keys.jobs_by_time(), 0, sample - 1):
            pipe.hmget(self.keys.job(text(job_id)), "status", "started_at", "finished_at")
        found = [
            (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
            for status, start, end in _rows(await pipe.execute())
            if status == JobStatus.SUCCEEDED.value and start and end
        ]
        self._durations = (time.monotonic(), found)
        return found

    def fault_plan(self, job_name: str) -> dict[str, str]:
        """The test-only fault plan for jobs named `job_name` (workers/trainer/faults.py)."""
        stored: dict[Any, Any] = self.redis.hgetall(self.keys.faults(job_name))
        return {text(k): text(v) for k, v in stored.items()}

    # --- state moves: each appends its status event in the same script

    def transition(
        self,
        job_id: str,
        target: JobStatus,
        event: JobEvent,
        lease: Lease | None = None,
        release: bool = False,
        **fields: Any,
    ) -> JobStatus:
        """Move the job to `target`, set `fields` and append `event` (a status_event(); its
        info["status"] is set to `target`) atomically; returns the previous status.

        With `lease`, only while that lease is held (LeaseLost otherwise); `release` drops it.
        Raises JobNotFound, or IllegalTransition when the current state does not allow it."""
        _no_status(fields)
        sources = [s.value for s in sources_of(target)]
        if target.is_terminal():
            fields.setdefault("finished_at", utcnow())
        token = lease.token if lease else ""
        k = self.keys
        outcome, current = self._transition(
            keys=[
                k.job(job_id),
                k.lease(job_id),
                k.active(),
                k.owner_prefix(),
                k.stats(),
                k.script_prefix(),
                k.events(job_id),
            ],
            args=[
                target.value,
                token,
                "1" if release else "0",
                "1" if target.is_terminal() else "0",
                event_payload(event, target),
                MAX_EVENTS,
                len(sources),
                *sources,
                *flatten(fields),
            ],
        )
        outcome = text(outcome)
        if outcome == "missing":
            raise JobNotFound(job_id)
        if outcome == "fenced":
            raise LeaseLost(f"job {job_id}: lease {token} is no longer held")
        if outcome == "illegal":
            raise IllegalTransition(JobStatus(text(current)), target)
        return JobStatus(text(current))

    def settle_planned(
        self, job_id: str, plan_key: str, target: JobStatus, event: JobEvent, **fields: Any
    ) -> bool:
        """A job that waited for its memory probe: route it (`target` queued, with its queue
        and predictions in `fields`) or fail it, with `event`, atomically, only if it is
        still queued and waiting on `plan_key`. True if this call settled it. Sends no
        message."""
        assert target in (JobStatus.QUEUED, JobStatus.FAILED)
        _no_status(fields)
        if target.is_terminal():
            fields.setdefault("finished_at", utcnow())
        else:
            fields.setdefault("enqueued_at", utcnow())
        k = self.keys
        return bool(
            self._settle_planned(
                keys=[
                    k.job(job_id),
                    k.active(),
                    k.owner_prefix(),
                    k.stats(),
                    k.script_prefix(),
                    k.events(job_id),
                ],
                args=[
                    plan_key,
                    target.value,
                    event_payload(event, target),
                    MAX_EVENTS,
                    *flatten(fields),
                ],
            )
        )

    def reclaim(self, job_id: str, event: JobEvent) -> bool:
        """Requeue a running job whose lease expired (its worker died), with `event`; True if
        it was."""
        return self.leases.reclaim(job_id, event_payload(event, JobStatus.QUEUED))

    def mark_resent(self, job_id: str, event: JobEvent) -> bool:
        """A queued job's message is sent again (the reconciler): restart its wait and append
        `event` (as a `queued` status event), only while it is queued; True if it was."""
        k = self.keys
        return bool(
            self._resent(
                keys=[k.job(job_id), k.events(job_id)],
                args=[utcnow().isoformat(), event_payload(event, JobStatus.QUEUED), MAX_EVENTS],
            )
        )

    def update(self, job_id: str, lease: Lease, **fields: Any) -> None:
        """Set fields other than the status (progress, the committed checkpoint) while `lease`
        is held; LeaseLost otherwise."""
        _no_status(fields)
        if not self._fenced_hset(
            keys=[self.keys.job(job_id), self.keys.lease(job_id)],
            args=[lease.token, *flatten(fields)],
        ):
            raise LeaseLost(f"job {job_id}: lease {lease.token} is no longer held")

    def request_cancel(self, job_id: str, principal: Principal | None = None) -> JobRecord:
        """Cancel a job: a queued one at once, a running one cooperatively (its worker stops at
        the next step). IllegalTransition when it has finished; JobNotFound when it does not
        exist or `principal` (if given) may not see it."""
        job = self.get(job_id) if principal is None else self.get_for(job_id, principal)
        if job.status is JobStatus.QUEUED:
            event = status_event(job.attempts, reason="cancelled while queued")
            try:
                self.transition(job_id, JobStatus.CANCELLED, event, cancel_requested=True)
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

    # --- the worker's side

    def signals(self, job_id: str, worker: str) -> Signals:
        """Cancel requests for the job and drain requests for the worker, as published."""
        return Signals(
            self.redis,
            {self.keys.control(job_id): "cancel", self.keys.worker_control(worker): "shutdown"},
        )

    def try_lock_reconciler(self, ttl_s: float) -> bool:
        """True when this process may run the reconciler's pass (one replica per interval)."""
        return bool(self.redis.set(self.keys.reconciler_lock(), "1", nx=True, px=int(ttl_s * 1000)))


class Signals:
    """A pub/sub subscription to control channels: `next()` says "cancel" or "shutdown"."""

    def __init__(self, redis: Redis, channels: dict[str, Signal]) -> None:
        self.channels = channels
        self._pubsub = redis.pubsub(ignore_subscribe_messages=True)

    def subscribe(self) -> Signals:
        self._pubsub.subscribe(*self.channels)
        return self

    def next(self, timeout_s: float) -> Signal | None:
        """The next signal within `timeout_s`, or None."""
        message = self._pubsub.get_message(timeout=timeout_s)
        if message and message["data"] in (b"cancel", b"drain"):
            return "cancel" if message["data"] == b"cancel" else "shutdown"
        return None

    def close(self) -> None:
        self._pubsub.close()


def _created(job: JobRecord, reply: Any, max_queued: int | None) -> None:
    outcome, queued = reply
    if text(outcome) == "full":
        raise QueueFull(job.owner, int(queued), max_queued or 0)


def _found(job_id: str, raw: dict[Any, Any]) -> JobRecord:
    if not raw:
        raise JobNotFound(job_id)
    return decode(raw)


def _visible(job: JobRecord, principal: Principal) -> JobRecord:
    if not principal.can_see(job.owner):
        raise JobNotFound(job.id)
    return job


def _no_status(fields: dict[str, Any]) -> None:
    if "status" in fields:
        raise ValueError("a job's status moves only with its event: pass the target instead")


def _rows(values: list[list[Any]]) -> list[list[str | None]]:
    return [[None if v is None else text(v) for v in row] for row in values]
