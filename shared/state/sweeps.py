"""SweepRegistry: the owner of sweep records in Redis, and of each sweep's Optuna study storage
(Optuna's own Redis journal, under the project's KEY_PREFIX, so the API and the workers read
one study).

A sweep (shared/sweeps.py drives it) is a hash with its spec and state, the table of its
trials (Optuna trial number -> the job created for it, its parameters and, once told, its
value), the ordered list of its trials' job ids (`trial_jobs`, which workers read to find a
trial's queued siblings), an index per owner and a set of the sweeps still running (the
reconciler advances those). Sweep keys are named in keys.py (SweepKeys), under the job keys'
prefix."""

from __future__ import annotations

import json
import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalRedisBackend
from pydantic import BaseModel
from redis import Redis

from shared.auth import Principal
from shared.schemas import SweepMetric, SweepSpec, SweepStatus
from shared.state.keys import RedisKeys, SweepKeys, text
from shared.state.records import utcnow
from shared.status import JobStatus

# A sweep id: "sw-" and 16 lowercase hex digits (new_sweep_id); routes validate path ids
# against shared.schemas.SWEEP_ID before they reach a key.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


# Create a sweep in one step: an Idempotency-Key seen before answers its first sweep (nothing
# is stored); an owner at their limit of running sweeps is refused (nothing is stored); else
# the key, the record and its indexes are written together.
# KEYS: idem (or ""), sweep, all, owner, running, owner_running
# ARGV: idem value, idem ttl_s, record json, created (us), sweep id, owner's limit (0: none)
_CREATE = """
if KEYS[1] ~= '' then
  local first = redis.call('GET', KEYS[1])
  if first then return {'replay', first} end
end
local limit = tonumber(ARGV[6])
if limit > 0 and redis.call('SCARD', KEYS[6]) >= limit then return {'limit', ''} end
if KEYS[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
redis.call('HSET', KEYS[2], 'record', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
redis.call('SADD', KEYS[5], ARGV[5])
redis.call('SADD', KEYS[6], ARGV[5])
return {'created', ''}
"""


class SweepNotFound(LookupError):
    def __init__(self, sweep_id: str) -> None:
        super().__init__(sweep_id)
        self.sweep_id = sweep_id

    def __str__(self) -> str:
        return f"no sweep {self.sweep_id!r}"


class SweepLimit(Exception):
    """The owner already has their limit of running sweeps (nothing was stored)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} running sweeps per owner: wait for one to end")
        self.limit = limit


class SweepIdempotencyConflict(ValueError):
    def __init__(self) -> None:
        super().__init__("this Idempotency-Key was used with a different sweep spec")


def new_sweep_id() -> str:
    return "sw-" + uuid.uuid4().hex[:16]


class SweepRecord(BaseModel):
    """A sweep as Redis stores it."""

    id: str
    owner: str
    status: SweepStatus = "running"
    spec: SweepSpec
    metric: SweepMetric
    n_trials: int  # what it will run: the spec's, or a smaller grid
    created_at: datetime
    finished_at: datetime | None = None
    cancel_requested: bool = False
    asked: int = 0
    waiting: str | None = None


class TrialEntry(BaseModel):
    """One row of a sweep's trial table."""

    number: int
    job_id: str | None = None  # None: asked, not queued yet (the owner's queue was full)
    params: dict[str, Any]
    value: float | None = None
    state: str = "RUNNING"  # Optuna's, once told: COMPLETE, PRUNED, FAIL
    reason: str | None = None  # why it failed before it had a job


@dataclass(frozen=True)
class JobState:
    """What a sweep needs of a trial's job."""

    status: JobStatus
    error: str | None
    result: dict[str, Any] | None


class SweepRegistry:
    """Sweep records and study storage. `redis_url` (Settings.REDIS_URL) is needed only for
    the Optuna study (study_storage)."""

    def __init__(self, redis: Redis, prefix: str = "trainyard", redis_url: str | None = None):
        self.redis, self.redis_url = redis, redis_url
        self.keys = SweepKeys(prefix)
        self.job_keys = RedisKeys(prefix)
        self._release = redis.register_script(_RELEASE)
        self._extend = redis.register_script(_EXTEND)
        self._create = redis.register_script(_CREATE)

    # --- the Optuna study

    def study_storage(self, sweep_id: str) -> JournalStorage:
        """The sweep's Optuna storage: a journal in this Redis, under the sweep's keys."""
        assert self.redis_url is not None, "SweepRegistry was made without redis_url"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():  # the Redis journal is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            backend = JournalRedisBackend(self.redis_url, prefix=self.keys.study(sweep_id))
        # Optuna's backend makes a client of its own (no timeouts, no retries: a Redis that
        # hangs would hang the sweep's pass); it uses ours, with both (connect_redis).
        backend._redis = self.redis  # pylint: disable=protected-access
        return JournalStorage(backend)

    # --- records

    def create(
        self,
        record: SweepRecord,
        idempotency: tuple[str, str, int] | None,
        max_running: int = 0,
    ) -> str:
        """Store a new sweep, in one Redis script; with `idempotency` (key, digest, ttl_s), a
        key seen before returns the first sweep's id instead (SweepIdempotencyConflict for
        another digest). An owner with `max_running` sweeps still running (0: no limit) is
        refused (SweepLimit) before anything is stored. Returns the id of the sweep stored
        (or replayed)."""
        idem, stored, ttl = "", "", 0
        if idempotency is not None:
            key, digest, ttl = idempotency
            idem = self.keys.idempotency(record.owner, key)
            stored = json.dumps({"digest": digest, "sweep_id": record.id})
        when = int(record.created_at.timestamp() * 1_000_000)
        keys = [
            idem,
            self.keys.sweep(record.id),
            self.keys.all(),
            self.keys.owner(record.owner),
            self.keys.running(),
            self.keys.owner_running(record.owner),
        ]
        args: list[str | int] = [
            stored,
            ttl,
            record.model_dump_json(),
            when,
            record.id,
            max_running,
        ]
        outcome, first_raw = self._create(keys=keys, args=args)
        if text(outcome) == "limit":
            raise SweepLimit(max_running)
        if text(outcome) == "replay":
            first = json.loads(text(first_raw))
            if idempotency is None or first["digest"] != idempotency[1]:
                raise SweepIdempotencyConflict()
            return str(first["sweep_id"])
        return record.id

    def get(self, sweep_id: str) -> SweepRecord:
        raw, cancel = self.redis.hmget(self.keys.sweep(sweep_id), ["record", "cancel"])
        if raw is None:
            raise SweepNotFound(sweep_id)
        return _with_cancel(SweepRecord.model_validate_json(raw), cancel)

    def get_for(self, sweep_id: str, principal: Principal) -> SweepRecord:
        """The sweep, if `principal` may see it; SweepNotFound otherwise (ids do not leak)."""
        record = self.get(sweep_id)
        if not principal.can_see(record.owner):
            raise SweepNotFound(sweep_id)
        return record

    def save(self, record: SweepRecord) -> None:
        """Write the record back (under the sweep's lock); a finished or cancelled sweep that
        has no trial left running leaves the running set."""
        pipe = self.redis.pipeline()
        pipe.hset(self.keys.sweep(record.id), mapping={"record": record.model_dump_json()})
        if record.finished_at is not None:
            pipe.srem(self.keys.running(), record.id)
            pipe.srem(self.keys.owner_running(record.owner), record.id)
        pipe.execute()

    def request_cancel(self, sweep_id: str) -> SweepRecord:
        """Mark the sweep cancelled: no more trials are asked (the driver cancels the trials
        still running). A field of its own, beside the record: a driver pass that read the
        record before and saves it after cannot undo the cancel."""
        self.get(sweep_id)  # SweepNotFound
        self.redis.hset(self.keys.sweep(sweep_id), "cancel", "1")
        return self.get(sweep_id)

    def page(self, principal: Principal, limit: int = 50) -> list[SweepRecord]:
        """The newest `limit` sweeps `principal` may see (an admin: everyone's)."""
        index = self.keys.all() if principal.admin else self.keys.owner(principal.owner)
        ids = [text(i) for i in self.redis.zrevrange(index, 0, limit - 1)]
        pipe = self.redis.pipeline()
        for sweep_id in ids:
            pipe.hmget(self.keys.sweep(sweep_id), ["record", "cancel"])
        return [
            _with_cancel(SweepRecord.model_validate_json(raw), cancel)
            for raw, cancel in pipe.execute()
            if raw
        ]

    def running(self) -> list[str]:
        return sorted(text(i) for i in self.redis.smembers(self.keys.running()))

    # --- trials

    def trials(self, sweep_id: str) -> list[TrialEntry]:
        """The trial table, by trial number."""
        raw: Any = self.redis.hvals(self.keys.trials(sweep_id))
        return sorted((TrialEntry.model_validate_json(v) for v in raw), key=lambda t: t.number)

    def put_trial(self, sweep_id: str, entry: TrialEntry) -> None:
        """Write a trial's row; the first time it has a job, append the job to trial_jobs."""
        key = self.keys.trials(sweep_id)
        old: Any = self.redis.hget(key, str(entry.number))
        had_job = old is not None and TrialEntry.model_validate_json(old).job_id is not None
        pipe = self.redis.pipeline()
        pipe.hset(key, str(entry.number), entry.model_dump_json())
        if entry.job_id is not None and not had_job:
            pipe.rpush(self.keys.trial_jobs(sweep_id), entry.job_id)
        pipe.execute()

    def trial_jobs(self, sweep_id: str) -> list[str]:
        """The job ids of the sweep's trials, in the order they were queued."""
        return [text(i) for i in self.redis.lrange(self.keys.trial_jobs(sweep_id), 0, -1)]

    def job_states(self, job_ids: list[str]) -> dict[str, JobState]:
        """Status, error and result of each job (jobs that vanished are left out)."""
        pipe = self.redis.pipeline()
        for job_id in job_ids:
            pipe.hmget(self.job_keys.job(job_id), "status", "error", "result")
        found: dict[str, JobState] = {}
        for job_id, (status, error, result) in zip(job_ids, pipe.execute(), strict=True):
            if status is None:
                continue
            found[job_id] = JobState(
                JobStatus(text(status)),
                None if error is None else text(error),
                None if result is None else json.loads(text(result)),
            )
        return found

    # --- the per-sweep lock

    def lock(self, sweep_id: str, ttl_s: float) -> str | None:
        """A token if this process may advance the sweep now (for `ttl_s`), else None."""
        token = uuid.uuid4().hex
        got = self.redis.set(self.keys.lock(sweep_id), token, nx=True, px=int(ttl_s * 1000))
        return token if got else None

    def relock(self, sweep_id: str, token: str, ttl_s: float) -> bool:
        """Hold the lock `ttl_s` more, if `token` still holds it."""
        return bool(self._extend(keys=[self.keys.lock(sweep_id)], args=[token, int(ttl_s * 1000)]))

    def advancing(self, sweep_id: str) -> bool:
        """True while a process holds the sweep's lock: it may be queueing trials now."""
        return bool(self.redis.exists(self.keys.lock(sweep_id)))

    def unlock(self, sweep_id: str, token: str) -> None:
        self._release(keys=[self.keys.lock(sweep_id)], args=[token])


def _with_cancel(record: SweepRecord, cancel: Any) -> SweepRecord:
    """The record as the `cancel` field (set by request_cancel) leaves it."""
    if cancel is not None and text(cancel) == "1" and not record.cancel_requested:
        update: dict[str, Any] = {"cancel_requested": True, "waiting": None}
        if record.finished_at is None:
            update["status"] = "cancelled"
        return record.model_copy(update=update)
    return record


def finished_now(record: SweepRecord) -> SweepRecord:
    """The record, marked finished now (a cancelled sweep keeps its status)."""
    status: SweepStatus = "cancelled" if record.cancel_requested else "finished"
    return record.model_copy(update={"status": status, "finished_at": utcnow(), "waiting": None})
