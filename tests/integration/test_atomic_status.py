"""A status change and its `status` event are one atomic step: whatever Redis call a process
dies at on a job's path, the record's status equals the status its last status event names.
The paths: submitted and trained to the end; cancelled while queued; handed back when its
worker drains; reclaimed by the reconciler after its worker died; routed after its memory
probe; failed out of attempts.

The fault hook is a Redis client that "crashes" at its n-th command: that command and every
later one fail, as if the process had been killed there. Each path runs in this process with
real Redis and S3 (the stack's) under a key prefix of its own, once per n, until a run gets
to the end without reaching its crash point."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis import ConnectionError as RedisConnectionError
from redis import ConnectionPool, Redis

import workers.trainer.job as job_module
from devstack.stack import Stack
from services.api.planner import ApiPlanner
from services.api.reconciler import Reconciler
from shared.broker import BrokerQueues, make_celery
from shared.config import Settings
from shared.planning import Planner
from shared.schemas import ClassifierSpec
from shared.state.events import EventStream
from shared.state.heartbeats import WorkerRegistry
from shared.state.jobs import JobRegistry
from shared.state.plans import PlanCache
from shared.status import JobStatus
from workers.trainer.job import JobExecutor, LeasedRun


class Crash(BaseException):  # not an Exception: nothing in the code under test may catch it
    """The process died at this Redis call."""


class CrashingRedis(Redis):
    """Redis that dies at the `crash_at`-th command sent from the thread that made it (the job's
    path; a pipeline counts once). From then on every command fails: in that thread with
    Crash, in others (the lease keeper) as a lost connection."""

    crash_at, calls, crashed, path_thread = 0, 0, False, 0

    def arm(self, crash_at: int) -> CrashingRedis:
        self.crash_at, self.path_thread = crash_at, threading.get_ident()
        return self

    def _tick(self) -> None:
        on_path = threading.get_ident() == self.path_thread
        if self.crashed:
            raise Crash() if on_path else RedisConnectionError("the process is gone")
        if on_path:
            self.calls += 1
            if self.calls == self.crash_at:
                self.crashed = True
                raise Crash()

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self._tick()
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._tick()
            return execute(*args, **kwargs)

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe


@pytest.fixture
def settings(stack: Stack) -> Settings:
    # A prefix and a queue of their own: the stack's reconciler and workers never see these
    # jobs or their messages.
    run = f"crash-{uuid.uuid4().hex[:8]}"
    return stack.config.settings().model_copy(update={"KEY_PREFIX": run, "QUEUE": run})


@pytest.fixture
def clean(redis: Redis, settings: Settings) -> Iterator[tuple[JobRegistry, EventStream]]:
    yield JobRegistry(redis, settings.KEY_PREFIX), EventStream(redis, settings.KEY_PREFIX)


def last_status_event(events: EventStream, job_id: str) -> str | None:
    found = [e.info["status"] for e in events.read(job_id) if e.kind == "status"]
    return found[-1] if found else None


SPEC = ClassifierSpec(max_steps=2, log_every=1, checkpoint_every=1, sample_every=1)
WORKER = "crash-worker"


def trained(redis: Redis, settings: Settings, job_id: str) -> None:
    """Submitted, taken, trained, succeeded (checkpoints, grids and the model on S3)."""
    JobRegistry(redis, settings.KEY_PREFIX).create(SPEC, "crash", job_id)
    JobExecutor(settings, WORKER, lambda *_: None).run(job_id)


def cancelled_while_queued(redis: Redis, settings: Settings, job_id: str) -> None:
    registry = JobRegistry(redis, settings.KEY_PREFIX)
    registry.create(SPEC, "crash", job_id)
    registry.request_cancel(job_id)


def handed_back_at_shutdown(redis: Redis, settings: Settings, job_id: str) -> None:
    """Its worker is told to drain at the first step: checkpoint, release, requeue."""
    JobRegistry(redis, settings.KEY_PREFIX).create(SPEC, "crash", job_id)
    JobExecutor(settings, WORKER, lambda *_: None).run(job_id)


def reclaimed_by_the_reconciler(redis: Redis, settings: Settings, job_id: str) -> None:
    """Its worker died (the lease expired): the reconciler puts it back in the queue."""
    registry = JobRegistry(redis, settings.KEY_PREFIX)
    registry.create(SPEC, "crash", job_id)
    registry.leases.acquire(job_id, WORKER, ttl_s=0.01, max_attempts=5)
    time.sleep(0.05)
    planner = ApiPlanner(
        registry,
        PlanCache(redis, settings.KEY_PREFIX, 60),
        make_celery(settings),
        settings,
        WorkerRegistry(redis, settings.KEY_PREFIX),
    )
    Reconciler(planner, BrokerQueues(redis), planner.celery, settings).pass_once()


def routed_after_its_probe(redis: Redis, settings: Settings, job_id: str) -> None:
    """Accepted while being planned; the planner settles it (here unplanned: no probe)."""
    registry = JobRegistry(redis, settings.KEY_PREFIX)
    registry.create(SPEC, "crash", job_id, planning="plan-key")
    cache = PlanCache(redis, settings.KEY_PREFIX, 60)
    workers = WorkerRegistry(redis, settings.KEY_PREFIX)
    Planner(registry, cache, make_celery(settings), settings, workers).settle_job(
        job_id, "plan-key", None, online=set()
    )


def given_up(redis: Redis, settings: Settings, job_id: str) -> None:
    """Out of attempts (MAX_ATTEMPTS 0 here): failed with the reason."""
    JobRegistry(redis, settings.KEY_PREFIX).create(SPEC, "crash", job_id)
    no_attempts = settings.model_copy(update={"MAX_ATTEMPTS": 0})
    JobExecutor(no_attempts, WORKER, lambda *_: None).run(job_id)


PATHS = {
    path.__name__: path
    for path in (
        trained,
        cancelled_while_queued,
        handed_back_at_shutdown,
        reclaimed_by_the_reconciler,
        routed_after_its_probe,
        given_up,
    )
}
ENDS = {
    "trained": JobStatus.SUCCEEDED,
    "cancelled_while_queued": JobStatus.CANCELLED,
    "handed_back_at_shutdown": JobStatus.QUEUED,
    "reclaimed_by_the_reconciler": JobStatus.QUEUED,
    "routed_after_its_probe": JobStatus.QUEUED,
    "given_up": JobStatus.FAILED,
}


@pytest.mark.parametrize("path", list(PATHS))
def test_every_crash_point_leaves_status_and_last_status_event_equal(
    path: str,
    settings: Settings,
    clean: tuple[JobRegistry, EventStream],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry, events = clean
    if path == "handed_back_at_shutdown":
        stop_at_once = LeasedRun.should_stop

        def drained(run: LeasedRun, step: int) -> bool:
            run.request_stop("shutdown")  # what LeaseKeeper does when the worker drains
            return stop_at_once(run, step)

        monkeypatch.setattr(LeasedRun, "should_stop", drained)
    crashes = 0
    for crash_at in range(1, 400):
        job_id = uuid.uuid4().hex[:16]
        redis = CrashingRedis(connection_pool=ConnectionPool.from_url(settings.REDIS_URL))
        redis.arm(crash_at)
        monkeypatch.setattr(job_module, "connect_redis", lambda _settings, r=redis: r)
        registry.redis.delete(registry.keys.reconciler_lock())  # each run's pass runs
        try:
            PATHS[path](redis, settings, job_id)
        except Crash:
            crashes += 1
        else:  # no crash point left: the whole path ran
            assert registry.get(job_id).status is ENDS[path]
            assert last_status_event(events, job_id) == ENDS[path].value
            break
        try:
            status = registry.get(job_id).status.value
        except KeyError:
            assert last_status_event(events, job_id) is None, crash_at  # neither was written
            continue
        assert last_status_event(events, job_id) == status, (crash_at, status)
    else:
        pytest.fail("the path never ran to its end")
    assert crashes >= 2, crashes  # each Redis call of the path was a crash point
