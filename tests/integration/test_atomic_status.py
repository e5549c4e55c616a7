"""A status change and its `status` event are one atomic step: whatever Redis call a process
dies at on a job's path (submit, take the lease, train, checkpoint, end), the record's status
equals the status its last status event names.

The fault hook is a Redis client that "crashes" at its n-th command: that command and every
later one fail, as if the process had been killed there. The job's path runs in this process
with real Redis and S3 (the stack's) under a key prefix of its own, once per n, until a run
gets to the end without reaching its crash point."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis import ConnectionError as RedisConnectionError
from redis import ConnectionPool, Redis

import workers.trainer.job as job_module
from devstack.stack import Stack
from shared.config import Settings
from shared.schemas import ClassifierSpec
from shared.state.events import EventStream
from shared.state.jobs import JobRegistry
from shared.status import JobStatus
from workers.trainer.job import JobExecutor


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
    # A prefix of its own: the stack's reconciler and workers never see these jobs.
    return stack.config.settings().model_copy(
        update={"KEY_PREFIX": f"crash-{uuid.uuid4().hex[:8]}"}
    )


@pytest.fixture
def clean(redis: Redis, settings: Settings) -> Iterator[tuple[JobRegistry, EventStream]]:
    yield JobRegistry(redis, settings.KEY_PREFIX), EventStream(redis, settings.KEY_PREFIX)


def last_status_event(events: EventStream, job_id: str) -> str | None:
    found = [e.info["status"] for e in events.read(job_id) if e.kind == "status"]
    return found[-1] if found else None


def run_path(
    settings: Settings, job_id: str, crash_at: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Submit and train one tiny job with every Redis call going through a client that dies at
    call `crash_at`. Raises Crash when it died before the end."""
    redis = CrashingRedis(connection_pool=ConnectionPool.from_url(settings.REDIS_URL))
    redis.arm(crash_at)
    monkeypatch.setattr(job_module, "connect_redis", lambda _settings: redis)
    spec = ClassifierSpec(max_steps=2, log_every=1, checkpoint_every=1, sample_every=1)
    JobRegistry(redis, settings.KEY_PREFIX).create(spec, "crash", job_id)
    JobExecutor(settings, "crash-worker", lambda *_: None).run(job_id)


def test_every_crash_point_leaves_status_and_last_status_event_equal(
    settings: Settings,
    clean: tuple[JobRegistry, EventStream],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry, events = clean
    checked = 0
    for crash_at in range(1, 400):
        job_id = uuid.uuid4().hex[:16]
        try:
            run_path(settings, job_id, crash_at, monkeypatch)
        except Crash:
            pass
        else:  # no crash point left: the whole path ran
            assert registry.get(job_id).status is JobStatus.SUCCEEDED
            assert last_status_event(events, job_id) == "succeeded"
            break
        try:
            status = registry.get(job_id).status.value
        except KeyError:
            assert last_status_event(events, job_id) is None, crash_at  # neither was written
            continue
        assert last_status_event(events, job_id) == status, (crash_at, status)
        checked += 1
    else:
        pytest.fail("the job's path never ran to its end")
    assert checked >= 10, checked  # the path has many Redis calls: each was a crash point
