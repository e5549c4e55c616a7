"""The queued-jobs index the registry keeps in step with every status change (real Redis):
a job's place in line is a ZRANK, an owner's queued count a SCARD, never a scan."""

from __future__ import annotations

import uuid

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from shared.schemas import ClassifierSpec
from shared.state.events import EventStream
from shared.state.jobs import JobRegistry
from shared.state.records import QueueFull, status_event
from shared.status import JobStatus
from tests.conftest import run_async


@pytest.fixture
def reg(redis: Redis) -> JobRegistry:
    return JobRegistry(redis, prefix=f"test-{uuid.uuid4().hex[:8]}")  # no worker looks here


def _positions(reg: JobRegistry, ids: list[str]) -> list[int | None]:
    return [reg.queue_position(reg.get(i)) for i in ids]


def test_place_in_line_follows_every_way_in_and_out_of_queued(reg: JobRegistry) -> None:
    ids = [reg.create(ClassifierSpec(), "ann").id for _ in range(4)]
    assert _positions(reg, ids) == [1, 2, 3, 4]

    lease = reg.leases.acquire(ids[0], "w1", ttl_s=0.2, max_attempts=5).lease  # a worker takes it
    assert lease is not None
    reg.transition(ids[2], JobStatus.CANCELLED, status_event())  # cancelled while queued
    assert _positions(reg, ids) == [None, 1, None, 2]

    reg.redis.delete(reg.keys.lease(ids[0]))  # its worker died: the job goes back in line
    assert reg.reclaim(ids[0], status_event(1))
    assert _positions(reg, ids) == [3, 1, None, 2]

    lease = reg.leases.acquire(ids[0], "w2", ttl_s=30, max_attempts=5).lease
    assert lease is not None
    reg.transition(ids[0], JobStatus.QUEUED, status_event(2), lease, release=True)  # shutdown
    assert _positions(reg, ids) == [3, 1, None, 2]

    reg.leases.acquire(ids[1], "w3", ttl_s=30, max_attempts=5)
    assert _positions(reg, ids) == [2, None, None, 1]


def test_memory_classes_queue_separately(reg: JobRegistry) -> None:
    small = reg.create(ClassifierSpec(), "ann", queue="trainyard.small").id
    big = reg.create(ClassifierSpec(), "ann", queue="trainyard.big").id
    other = reg.create(ClassifierSpec(), "ann", queue="trainyard.small").id
    assert _positions(reg, [small, big, other]) == [1, 1, 2]


def test_owner_cap_counts_only_queued_jobs(reg: JobRegistry) -> None:
    ids = [reg.create(ClassifierSpec(), "bob", max_queued=2).id for _ in range(2)]
    with pytest.raises(QueueFull):
        reg.create(ClassifierSpec(), "bob", max_queued=2)
    reg.create(ClassifierSpec(), "carol", max_queued=2)  # another owner's line is separate
    reg.leases.acquire(ids[0], "w1", ttl_s=30, max_attempts=5)  # running no longer counts
    reg.create(ClassifierSpec(), "bob", max_queued=2)
    with pytest.raises(QueueFull):
        reg.create(ClassifierSpec(), "bob", max_queued=2)


def test_recent_durations_feed_etas_and_are_reused_for_a_while(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run times queued jobs' ETAs come from: read from the records, then reused for
    DURATIONS_CACHE_S (each read of a queued job asks); an empty answer is never reused."""
    kwargs = redis.connection_pool.connection_kwargs
    port, password = kwargs["port"], kwargs.get("password")  # the stack's Redis has a password
    prefix = f"test-{uuid.uuid4().hex[:8]}"

    def finish(reg: JobRegistry) -> None:
        job_id = reg.create(ClassifierSpec(), "ann").id
        lease = reg.leases.acquire(job_id, "w1", ttl_s=30, max_attempts=5).lease
        assert lease is not None
        reg.transition(job_id, JobStatus.SUCCEEDED, status_event(1), lease)

    async def scenario() -> list[list[float]]:
        async with AsyncRedis(port=port, password=password) as aredis:
            reg = JobRegistry(redis, prefix, aredis)
            seen = [await reg.arecent_durations()]  # none yet
            reg.create(ClassifierSpec(), "ann")  # queued: not a duration
            finish(reg)
            seen.append(await reg.arecent_durations())  # read again: the empty one was not kept
            finish(reg)
            seen.append(await reg.arecent_durations())  # reused (well within 5 s)
            monkeypatch.setattr(JobRegistry, "DURATIONS_CACHE_S", 0.0)
            seen.append(await reg.arecent_durations())  # stale: read again
            return seen

    seen = run_async(scenario())
    assert [len(s) for s in seen] == [0, 1, 1, 2]
    assert all(d >= 0 for d in seen[-1])


def test_the_running_event_names_its_worker_attempt_and_fence_whatever_the_worker_is_called(
    reg: JobRegistry,
) -> None:
    """The acquire script fills the attempt and fence into the `running` event: a worker name
    that looks like the template's placeholders stays a name, and the event stays JSON."""
    events = EventStream(reg.redis, reg.keys.prefix)
    job_id = reg.create(ClassifierSpec(), "ann").id
    worker = 'w"@fence "fence": "@fence" "attempt": "@attempt"'
    for attempt in (1, 2):
        lease = reg.leases.acquire(job_id, worker, ttl_s=30, max_attempts=5).lease
        assert lease is not None and lease.attempt == attempt
        running = [e for e in events.read(job_id) if e.info.get("status") == "running"]
        assert running[-1].attempt == attempt
        assert running[-1].info == {
            "status": "running",
            "worker": worker,
            "attempt": attempt,
            "fence": lease.fence,
        }
        reg.transition(job_id, JobStatus.QUEUED, status_event(attempt), lease, release=True)
