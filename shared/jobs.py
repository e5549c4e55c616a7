"""The Redis job registry: records, atomic state moves, and the per-job lease with fencing.

A worker runs a job only while it holds the job's lease: a Redis key holding a token
"{fence}:{worker}" with an expiry the worker keeps renewing. The fence number grows with every
acquisition, and every write a worker makes (status, progress, events, checkpoint commits)
checks its token atomically in a Lua script, so a stale or duplicate worker can neither run
at the same time as the owner nor overwrite newer state."""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from shared.auth import Principal
from shared.schemas import JobPublic, JobSpec, JobSpecAdapter
from shared.status import TERMINAL, IllegalTransition, JobStatus, sources_of


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


class LeaseLost(RuntimeError):
    """This worker no longer holds the job's lease: another worker owns the job now."""


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

    def active(self) -> str:
        """Queued and running jobs: what the reconciler looks at."""
        return f"{self.prefix}:jobs:active"

    def owner_jobs(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}:jobs"

    def owner_active(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}:active"

    def queued(self, queue: str | None) -> str:
        """Queued jobs of one queue (a memory class's, or the default), ordered by when they
        entered `queued`: a job's place in line is its ZRANK, O(log n)."""
        return f"{self.prefix}:queued:{queue or ''}"

    def owner_queued(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}:queued"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    def control(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:control"

    def lease(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:lease"

    def fence(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:fence"

    def lease_log(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:leases"

    def faults(self, job_name: str) -> str:
        """Test-only fault plan, keyed by job name so a test can write it before it submits."""
        return f"{self.prefix}:faults:{job_name}"

    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def worker_busy(self, worker: str) -> str:
        return f"{self.prefix}:worker:{worker}:busy"

    def idempotency(self, owner: str, key: str) -> str:
        return f"{self.prefix}:idem:{owner}:{key}"

    def stats(self) -> str:
        return f"{self.prefix}:stats"

    def worker_control(self, worker: str) -> str:
        return f"{self.prefix}:worker:{worker}:control"

    def worker_draining(self, worker: str) -> str:
        return f"{self.prefix}:worker:{worker}:draining"

    def reconciler_lock(self) -> str:
        return f"{self.prefix}:reconciler:lock"

    def datasets(self) -> str:
        return f"{self.prefix}:datasets"

    def plan_cache(self, key: str) -> str:
        return f"{self.prefix}:plan:{key}"

    def plan_waiting(self, key: str) -> str:  # SET: ids of jobs waiting for key's probe
        return f"{self.prefix}:plan:waiting:{key}"

    def plan_inflight(self, key: str) -> str:  # set while a planner worker is asked to probe
        return f"{self.prefix}:plan:inflight:{key}"

    def plan_rate(self, owner: str) -> str:  # an owner's probe requests this minute
        return f"{self.prefix}:plan:rate:{owner}"


@dataclass(frozen=True)
class Lease:
    job_id: str
    token: str  # "{fence}:{worker}"
    fence: int
    attempt: int


@dataclass(frozen=True)
class Acquired:
    """The outcome of trying to take a job: `lease` is set only when this worker got it."""

    outcome: str  # ok | held | finished | exhausted | missing
    lease: Lease | None = None
    detail: str = ""


# Every script that moves a job into or out of `queued` keeps two indexes in step, so that
# neither a job's place in line nor an owner's count of queued jobs needs a scan:
# {prefix}:queued:{queue} (ZSET, score = order of entering `queued`) and
# {prefix}:owner:{owner}:queued (SET). `prefix` is passed as a key, with its colon.
_QUEUED_INDEX = """
local function index_queued(prefix, job, on)
  local f = redis.call('HMGET', job, 'id', 'queue', 'owner')
  local id, queue, owner = f[1], f[2] or '', f[3] or ''
  if on then
    redis.call('ZADD', prefix .. 'queued:' .. queue, redis.call('INCR', prefix .. 'queued:seq'), id)
    redis.call('SADD', prefix .. 'owner:' .. owner .. ':queued', id)
  else
    redis.call('ZREM', prefix .. 'queued:' .. queue, id)
    redis.call('SREM', prefix .. 'owner:' .. owner .. ':queued', id)
  end
end
"""

# Move a job to a target status if its current status is an allowed source, optionally only
# while the caller holds the lease (fencing), and set fields, in one atomic step.
# KEYS: job, lease, active set, owner key prefix, stats, key prefix.
# ARGV: target, token ('' = unfenced), release ('1'/'0'), terminal ('1'/'0'), n_sources,
# sources..., field, value, ...
_TRANSITION = (
    _QUEUED_INDEX
    + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {'missing', ''} end
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then return {'fenced', cur} end
local n = tonumber(ARGV[5])
for i = 6, 5 + n do
  if ARGV[i] == cur then
    local fields = {'status', ARGV[1]}
    for j = 6 + n, #ARGV do fields[#fields + 1] = ARGV[j] end
    redis.call('HSET', KEYS[1], unpack(fields))
    local queued = ARGV[1] == 'queued'
    if (cur == 'queued') ~= queued then index_queued(KEYS[6], KEYS[1], queued) end
    if ARGV[3] == '1' and redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
    if ARGV[4] == '1' then
      redis.call('SREM', KEYS[3], KEYS[1])
      local owner = redis.call('HGET', KEYS[1], 'owner')
      if owner then redis.call('SREM', KEYS[4] .. owner .. ':active', KEYS[1]) end
      redis.call('HINCRBY', KEYS[5], 'finished:' .. ARGV[1], 1)
    end
    return {'ok', cur}
  end
end
return {'illegal', cur}
"""
)

# Take a job: it must be queued, or running with no live lease (its worker died). Counts the
# attempt; refuses past the budget (attempts that did not end in a graceful requeue).
# KEYS: job, lease, fence, lease log, key prefix. ARGV: worker, ttl_ms, max_attempts, now,
# terminal...
_ACQUIRE = (
    _QUEUED_INDEX
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
for i = 5, #ARGV do if status == ARGV[i] then return {'finished', status} end end
local holder = redis.call('GET', KEYS[2])
if holder then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 1000, '*', 'event', 'dropped', 'worker', ARGV[1],
             'holder', holder, 'time', ARGV[4])
  return {'held', holder}
end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
local requeues = tonumber(redis.call('HGET', KEYS[1], 'requeues') or '0')
if attempts - requeues >= tonumber(ARGV[3]) then return {'exhausted', tostring(attempts)} end
local fence = redis.call('INCR', KEYS[3])
local token = fence .. ':' .. ARGV[1]
redis.call('SET', KEYS[2], token, 'PX', ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'running', 'attempts', attempts + 1, 'worker', ARGV[1],
           'fence', fence)
if status == 'queued' then index_queued(KEYS[5], KEYS[1], false) end
if not redis.call('HGET', KEYS[1], 'started_at') then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[4])
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', 1000, '*', 'event', 'acquired', 'worker', ARGV[1],
           'fence', fence, 'attempt', attempts + 1, 'time', ARGV[4])
return {'ok', token, tostring(fence), tostring(attempts + 1)}
"""
)

# KEYS: lease. ARGV: token, ttl_ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# Fenced field update. KEYS: job, lease. ARGV: token, field, value, ...
_FENCED_HSET = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
return 1
"""

# A running job whose lease expired (its worker died) goes back to the queue.
# KEYS: job, lease, lease log, key prefix. ARGV: now.
_RECLAIM = (
    _QUEUED_INDEX
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'enqueued_at', ARGV[1])
index_queued(KEYS[4], KEYS[1], true)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 1000, '*', 'event', 'reclaimed', 'time', ARGV[1])
return 1
"""
)

# Create a queued job unless its owner already has ARGV[3] (> 0) queued jobs, and push its
# broker message (ARGV[4], unless empty) onto the broker queue: created and enqueued at once.
# KEYS: job, all jobs by time, owner's jobs by time, active, owner's active, stats, owner's
# queued, key prefix, broker queue. ARGV: job id, score, cap, message, field, value, ...
_CREATE = (
    _QUEUED_INDEX
    + """
local cap = tonumber(ARGV[3])
local queued = redis.call('SCARD', KEYS[7])
if cap > 0 and queued >= cap then return {'full', queued} end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[4], KEYS[1])
redis.call('SADD', KEYS[5], KEYS[1])
redis.call('HINCRBY', KEYS[6], 'submitted', 1)
index_queued(KEYS[8], KEYS[1], true)
if ARGV[4] ~= '' then redis.call('LPUSH', KEYS[9], ARGV[4]) end
return {'ok', queued}
"""
)

# Settle a job that waited for the planner's probe (shared/planning.py): only while it is
# queued and still waiting on this plan key, so exactly one process settles it. Routed: it
# moves to its class's queue index (its message is sent next). Failed: terminal, as
# _TRANSITION does it. KEYS: job, active, owner key prefix, stats, key prefix.
# ARGV: plan key, target ('queued' or 'failed'), field, value, ...
_SETTLE_PLANNED = (
    _QUEUED_INDEX
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
if redis.call('HGET', KEYS[1], 'planning') ~= ARGV[1] then return 0 end
index_queued(KEYS[5], KEYS[1], false)
redis.call('HDEL', KEYS[1], 'planning')
local fields = {'status', ARGV[2]}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
if ARGV[2] == 'queued' then
  index_queued(KEYS[5], KEYS[1], true)
else
  redis.call('SREM', KEYS[2], KEYS[1])
  local owner = redis.call('HGET', KEYS[1], 'owner')
  if owner then redis.call('SREM', KEYS[3] .. owner .. ':active', KEYS[1]) end
  redis.call('HINCRBY', KEYS[4], 'finished:' .. ARGV[2], 1)
end
return 1
"""
)

_JSON_FIELDS = ("spec", "result", "pending")


def _encode(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _flatten(fields: dict[str, Any]) -> list[str]:
    flat: list[str] = []
    for key, value in fields.items():
        flat += [key, _encode(value)]
    return flat


class JobRegistry:
    """Job records as Redis hashes, a sorted set for newest-first listing, leases for workers."""

    DURATIONS_CACHE_S = 5.0  # how stale arecent_durations() may be: it only feeds ETAs

    def __init__(
        self, redis: Redis, prefix: str = "trainyard", aredis: AsyncRedis | None = None
    ) -> None:
        self.redis = redis
        self.keys = RedisKeys(prefix)
        # The API's hot paths (submit, read) use the asyncio client: no thread hop per request.
        self._aredis = aredis
        self._acreate = aredis.register_script(_CREATE) if aredis is not None else None
        self._create = redis.register_script(_CREATE)
        self._transition = redis.register_script(_TRANSITION)
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._fenced_hset = redis.register_script(_FENCED_HSET)
        self._reclaim = redis.register_script(_RECLAIM)
        self._settle_planned = redis.register_script(_SETTLE_PLANNED)
        self._durations: tuple[float, list[float]] = (-1e9, [])

    # --- records

    def _new(
        self,
        spec: JobSpec,
        owner: str,
        job_id: str | None = None,
        max_queued: int | None = None,
        message: tuple[str, str] | None = None,
        **extra: Any,
    ) -> tuple[JobPublic, list[str], list[Any]]:
        """A new job's record, and the _CREATE script's keys and arguments that store it."""
        now = utcnow()
        job = JobPublic(
            id=job_id or new_job_id(),
            owner=owner,
            status=JobStatus.QUEUED,
            spec=spec,
            created_at=now,
            enqueued_at=now,
            **extra,
        )
        fields = {
            "id": job.id,
            "owner": owner,
            "status": job.status.value,
            "spec": spec.model_dump(mode="json"),
            "created_at": now,
            "enqueued_at": now,
            "attempts": 0,
            "requeues": 0,
            "step": 0,
            "epoch": 0,
            "cancel_requested": False,
            **{k: v for k, v in extra.items() if v is not None},  # routing, predictions
        }
        k = self.keys
        keys = [
            k.job(job.id),
            k.jobs_by_time(),
            k.owner_jobs(owner),
            k.active(),
            k.owner_active(owner),
            k.stats(),
            k.owner_queued(owner),
            f"{k.prefix}:",
            message[0] if message else f"{k.prefix}:no-queue",
        ]
        payload = message[1] if message else ""
        return job, keys, [job.id, _score(now), max_queued or 0, payload, *_flatten(fields)]

    def create(
        self,
        spec: JobSpec,
        owner: str,
        job_id: str | None = None,
        max_queued: int | None = None,
        message: tuple[str, str] | None = None,
        **extra: Any,
    ) -> JobPublic:
        """Store a new queued job for `owner` and return its record; QueueFull when the owner
        already has `max_queued` queued jobs (checked and created atomically). `message`
        (broker queue, payload) is pushed in the same step: see shared.broker.training_message."""
        job, keys, args = self._new(spec, owner, job_id, max_queued, message, **extra)
        return _created(job, self._create(keys=keys, args=args), max_queued)

    async def acreate(
        self,
        spec: JobSpec,
        owner: str,
        job_id: str | None = None,
        max_queued: int | None = None,
        message: tuple[str, str] | None = None,
        **extra: Any,
    ) -> JobPublic:
        """create() on the asyncio client."""
        assert self._acreate is not None, "JobRegistry was made without an asyncio client"
        job, keys, args = self._new(spec, owner, job_id, max_queued, message, **extra)
        return _created(job, await self._acreate(keys=keys, args=args), max_queued)

    def get(self, job_id: str) -> JobPublic:
        """The job's record; JobNotFound if there is none."""
        return _found(job_id, self.redis.hgetall(self.keys.job(job_id)))

    async def aget(self, job_id: str) -> JobPublic:
        """get() on the asyncio client."""
        return _found(job_id, await self.aredis.hgetall(self.keys.job(job_id)))

    def get_for(self, job_id: str, principal: Principal) -> JobPublic:
        """The job, if `principal` may see it; JobNotFound otherwise (ids do not leak)."""
        return _visible(self.get(job_id), principal)

    async def aget_for(self, job_id: str, principal: Principal) -> JobPublic:
        """get_for() on the asyncio client."""
        return _visible(await self.aget(job_id), principal)

    @property
    def aredis(self) -> AsyncRedis:
        assert self._aredis is not None, "JobRegistry was made without an asyncio client"
        return self._aredis

    def field(self, job_id: str, name: str) -> str | None:
        value = self.redis.hget(self.keys.job(job_id), name)
        return None if value is None else _text(value)

    def page(
        self,
        principal: Principal,
        cursor: str | None = None,
        limit: int = 50,
        status: JobStatus | None = None,
        task: str | None = None,
    ) -> tuple[list[JobPublic], str | None]:
        """Newest-first jobs the principal may see (admins: everyone's), filtered, after
        `cursor`; returns the page and the cursor of the next one (None at the end)."""
        index = (
            self.keys.jobs_by_time() if principal.admin else self.keys.owner_jobs(principal.owner)
        )
        top: Any
        top, after_id = _read_cursor(cursor)
        found: list[JobPublic] = []
        chunk = max(limit * 2, 50)
        while len(found) < limit:
            entries: Any = self.redis.zrevrangebyscore(
                index, top, "-inf", start=0, num=chunk, withscores=True
            )
            fresh = [(_text(m), s) for m, s in entries if not _seen(_text(m), s, top, after_id)]
            if not fresh:
                return found, None
            pipe = self.redis.pipeline()
            for job_id, _ in fresh:
                pipe.hgetall(self.keys.job(job_id))
            for (job_id, score), raw in zip(fresh, pipe.execute(), strict=True):
                top, after_id = score, job_id
                if not raw:
                    continue
                job = self._decode(raw)
                if (status is None or job.status is status) and (
                    task is None or job.spec.task == task
                ):
                    found.append(job)
                    if len(found) == limit:
                        return found, _make_cursor(score, job_id)
        return found, None

    def active_ids(self) -> list[str]:
        """Ids of queued and running jobs."""
        prefix = self.keys.job("")
        return [_text(k).removeprefix(prefix) for k in self.redis.smembers(self.keys.active())]

    # --- state moves

    def transition(
        self,
        job_id: str,
        target: JobStatus,
        lease: Lease | None = None,
        release: bool = False,
        **fields: Any,
    ) -> JobStatus:
        """Move the job to `target` and set `fields` atomically; returns the previous status.

        With `lease`, only while that lease is held (LeaseLost otherwise); `release` drops it.
        Raises JobNotFound, or IllegalTransition when the current state does not allow it."""
        sources = [s.value for s in sources_of(target)]
        if target.is_terminal():
            fields.setdefault("finished_at", utcnow())
        token = lease.token if lease else ""
        outcome, current = self._transition(
            keys=[
                self.keys.job(job_id),
                self.keys.lease(job_id),
                self.keys.active(),
                f"{self.keys.prefix}:owner:",
                self.keys.stats(),
                f"{self.keys.prefix}:",
            ],
            args=[
                target.value,
                token,
                "1" if release else "0",
                "1" if target.is_terminal() else "0",
                len(sources),
                *sources,
                *_flatten(fields),
            ],
        )
        outcome = _text(outcome)
        if outcome == "missing":
            raise JobNotFound(job_id)
        if outcome == "fenced":
            raise LeaseLost(f"job {job_id}: lease {token} is no longer held")
        if outcome == "illegal":
            raise IllegalTransition(JobStatus(_text(current)), target)
        return JobStatus(_text(current))

    def settle_planned(self, job_id: str, plan_key: str, target: JobStatus, **fields: Any) -> bool:
        """A job that waited for its memory probe: route it (`target` queued, with its queue
        and predictions in `fields`) or fail it, atomically, only if it is still queued
        and waiting on `plan_key`. True if this call settled it. Sends no message."""
        assert target in (JobStatus.QUEUED, JobStatus.FAILED)
        if target.is_terminal():
            fields.setdefault("finished_at", utcnow())
        else:
            fields.setdefault("enqueued_at", utcnow())
        k = self.keys
        return bool(
            self._settle_planned(
                keys=[k.job(job_id), k.active(), f"{k.prefix}:owner:", k.stats(), f"{k.prefix}:"],
                args=[plan_key, target.value, *_flatten(fields)],
            )
        )

    def update(self, job_id: str, lease: Lease | None = None, **fields: Any) -> None:
        """Set non-status fields (progress, ...); with `lease`, only while it is held."""
        if lease is None:
            self.redis.hset(
                self.keys.job(job_id), mapping={k: _encode(v) for k, v in fields.items()}
            )
        elif not self._fenced_hset(
            keys=[self.keys.job(job_id), self.keys.lease(job_id)],
            args=[lease.token, *_flatten(fields)],
        ):
            raise LeaseLost(f"job {job_id}: lease {lease.token} is no longer held")

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

    def queue_position(self, job: JobPublic) -> int | None:
        """1 for the next queued job of its queue to be taken; None when it is not queued."""
        rank: Any = self.redis.zrank(self.keys.queued(job.queue), job.id)
        return None if rank is None else int(rank) + 1

    async def aqueue_position(self, job: JobPublic) -> int | None:
        """queue_position() on the asyncio client."""
        rank: Any = await self.aredis.zrank(self.keys.queued(job.queue), job.id)
        return None if rank is None else int(rank) + 1

    async def arecent_durations(self, sample: int = 50) -> list[float]:
        """Run times in seconds of the succeeded jobs among the `sample` newest. Once there are
        any, the answer is reused for DURATIONS_CACHE_S: every read of a queued job asks (the
        dashboard's list reads each queued job it shows), and their median moves slowly."""
        taken, found = self._durations
        if found and time.monotonic() - taken < self.DURATIONS_CACHE_S:
            return found
        ids = await self.aredis.zrevrange(self.keys.jobs_by_time(), 0, sample - 1)
        pipe = self.aredis.pipeline()
        for job_id in ids:
            pipe.hmget(self.keys.job(_text(job_id)), "status", "started_at", "finished_at")
        found = [
            (
                datetime.fromisoformat(_text(finished)) - datetime.fromisoformat(_text(started))
            ).total_seconds()
            for status, started, finished in await pipe.execute()
            if status == b"succeeded" and started and finished
        ]
        self._durations = (time.monotonic(), found)
        return found

    def cancel_requested(self, job_id: str) -> bool:
        return self.field(job_id, "cancel_requested") == "1"

    # --- leases

    def acquire(self, job_id: str, worker: str, ttl_s: float, max_attempts: int) -> Acquired:
        """Take the job's lease and mark it running, if nobody holds it and budget remains."""
        k = self.keys
        reply = self._acquire(
            keys=[
                k.job(job_id),
                k.lease(job_id),
                k.fence(job_id),
                k.lease_log(job_id),
                f"{k.prefix}:",
            ],
            args=[
                worker,
                int(ttl_s * 1000),
                max_attempts,
                utcnow().isoformat(),
                *(s.value for s in TERMINAL),
            ],
        )
        outcome, *rest = [_text(r) for r in reply]
        if outcome != "ok":
            return Acquired(outcome, detail=rest[0] if rest else "")
        token, fence, attempt = rest
        return Acquired("ok", Lease(job_id, token, int(fence), int(attempt)))

    def renew(self, lease: Lease, ttl_s: float) -> bool:
        """Extend the lease; False when it is no longer ours."""
        return bool(
            self._renew(keys=[self.keys.lease(lease.job_id)], args=[lease.token, int(ttl_s * 1000)])
        )

    def holder(self, job_id: str) -> str | None:
        value = self.redis.get(self.keys.lease(job_id))
        return None if value is None else _text(value)

    def log_lease(self, job_id: str, event: str, **info: Any) -> None:
        self.redis.xadd(
            self.keys.lease_log(job_id),
            {"event": event, "time": utcnow().isoformat(), **{k: str(v) for k, v in info.items()}},
            maxlen=1000,
            approximate=True,
        )

    def lease_history(self, job_id: str) -> list[dict[str, str]]:
        """The job's lease log: acquisitions, dropped duplicates, releases, reclaims."""
        entries: Any = self.redis.xrange(self.keys.lease_log(job_id))
        return [{_text(k): _text(v) for k, v in fields.items()} for _, fields in entries]

    def reclaim(self, job_id: str) -> bool:
        """Requeue a running job whose lease expired (its worker died); True if it was."""
        k = self.keys
        return bool(
            self._reclaim(
                keys=[k.job(job_id), k.lease(job_id), k.lease_log(job_id), f"{k.prefix}:"],
                args=[utcnow().isoformat()],
            )
        )

    @staticmethod
    def _decode(raw: dict[Any, Any]) -> JobPublic:
        data: dict[str, Any] = {_text(k): _text(v) for k, v in raw.items()}
        for key in _JSON_FIELDS:
            if key in data:
                data[key] = json.loads(data[key])
        data["spec"] = JobSpecAdapter.validate_python(data["spec"])
        data["cancel_requested"] = data.get("cancel_requested") == "1"
        return JobPublic.model_validate({k: v for k, v in data.items() if v != ""})


def _created(job: JobPublic, reply: Any, max_queued: int | None) -> JobPublic:
    outcome, queued = reply
    if _text(outcome) == "full":
        raise QueueFull(job.owner or "", int(queued), max_queued or 0)
    return job


def _found(job_id: str, raw: dict[Any, Any]) -> JobPublic:
    if not raw:
        raise JobNotFound(job_id)
    return JobRegistry._decode(raw)


def _visible(job: JobPublic, principal: Principal) -> JobPublic:
    if not principal.can_see(job.owner):
        raise JobNotFound(job.id)
    return job


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# A job id: 16 lowercase hex digits (new_job_id). The API validates path ids against it.
JOB_ID = r"^[0-9a-f]{16}$"


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


def _score(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000)  # microseconds: exact in a double, sorts by time


# A page cursor: "<score>-<job id>", the last job returned and its index score (microseconds).
# Every string of this form is a valid cursor, so the API can document it as a pattern.
CURSOR = r"^[0-9]{1,19}-[0-9a-f]{16}$"


def _make_cursor(score: float, job_id: str) -> str:
    return f"{int(score)}-{job_id}"


def _read_cursor(cursor: str | None) -> tuple[float | str, str | None]:
    """(highest score to read, id already returned at that score); InvalidCursor unless it
    matches CURSOR."""
    if not cursor:
        return "+inf", None
    if not re.fullmatch(CURSOR, cursor):
        raise InvalidCursor(cursor)
    score, job_id = cursor.split("-", 1)
    return int(score), job_id


def _seen(job_id: str, score: float, top: Any, after_id: str | None) -> bool:
    # Members sharing the cursor's score come in descending id order: skip up to the cursor.
    return after_id is not None and score == top and job_id >= after_id


class InvalidCursor(ValueError):
    def __init__(self, cursor: str) -> None:
        super().__init__(f"cursor {cursor!r} is not one this API returned")
