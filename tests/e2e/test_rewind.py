"""The job page of a restarted job, in Debian's chromium against a real stack: a `rewind` event
arriving live drops what the page drew past its step (curves, sample grids, checkpoints,
progress), and the new attempt's steps are drawn once.

The job is stored in the stack's Redis and held by a lease of this test (no worker runs it,
the reconciler leaves it alone); its events go onto the job's stream as a worker writes them,
and the page reads them through the API's SSE route."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from devstack.stack import Stack
from shared.schemas import ClassifierSpec, EventKind, JobEvent
from shared.state.events import EventStream
from shared.state.jobs import JobRegistry
from shared.state.leases import Lease
from shared.state.records import status_event
from shared.status import JobStatus
from shared.storage import JobKeys
from tests.e2e.browser import UI_TIMEOUT_MS, open_job, shot, sign_in


class Held:
    """A job of the stack's user "dev" that this test runs instead of a worker."""

    def __init__(self, stack: Stack) -> None:
        redis = stack.redis_client()
        self.registry = JobRegistry(redis)
        self.events = EventStream(redis)
        spec = ClassifierSpec(max_steps=20, log_every=1, checkpoint_every=5, sample_every=5)
        self.id = self.registry.create(spec, "dev").id  # no queue message: no worker takes it
        got = self.registry.leases.acquire(self.id, "e2e-rewind", ttl_s=600, max_attempts=5)
        assert got.lease is not None
        self.lease: Lease = got.lease

    def emit(self, kind: EventKind, step: int, attempt: int, **info: Any) -> None:
        metrics = {"loss": 1.0 / step} if kind == "step" else {}
        if kind == "sample":
            info["key"] = JobKeys(self.id).sample(step)
        event = JobEvent(
            kind=kind,
            time=time.time(),
            attempt=attempt,
            step=step,
            epoch=0,
            metrics=metrics,
            info=info,
        )
        self.events.publish(self.id, [event])

    def attempt_1_dies_at_15(self) -> None:
        self.emit("log", 0, 1, total_steps=20, resumed_from=0, device="cpu")
        for step in range(1, 16):
            self.emit("step", step, 1)
            if step % 5 == 0:
                self.emit("checkpoint", step, 1)
                self.emit("sample", step, 1)

    def restart(self) -> None:
        """Attempt 1's worker died: its lease lapses, the reconciler's reclaim puts the job
        back in the queue, and attempt 2 takes it (a `running` event with attempt 2)."""
        self.registry.redis.delete(self.registry.keys.lease(self.id))
        assert self.registry.reclaim(self.id, status_event(1, reason="test: worker lost"))
        got = self.registry.leases.acquire(self.id, "e2e-rewind", ttl_s=600, max_attempts=5)
        assert got.lease is not None and got.lease.attempt == 2
        self.lease = got.lease

    def end(self) -> None:
        event = status_event(2, reason="test over")
        self.registry.transition(self.id, JobStatus.CANCELLED, event, self.lease, release=True)


@pytest.fixture
def held(stack: Stack) -> Iterator[Held]:
    job = Held(stack)
    yield job
    if not job.registry.get(job.id).status.is_terminal():
        job.end()


def test_a_live_rewind_drops_what_the_page_drew_past_its_step(
    page: Page, base_url: str, token: str, held: Held
) -> None:
    sign_in(page, base_url, token)
    open_job(page, held.id)
    expect(page.locator("#stream-state")).to_contain_text("live")
    held.attempt_1_dies_at_15()
    loss = page.locator("#charts .chart").first
    step = page.locator("#job-step")
    expect(loss).to_have_attribute("data-points", "15")
    expect(step).to_have_attribute("data-step", "15")
    expect(page.locator("#sample-label")).to_have_text("step 15 (3 of 3)")
    expect(page.locator("#job-facts")).to_contain_text("3 checkpoints")
    shot(page, "20-before-rewind")

    # The worker died; the next attempt resumes from the checkpoint of step 10 (the one of
    # step 15 was found corrupt, say): its rewind arrives while the page is open.
    held.restart()
    held.emit("rewind", 10, 2, resumed_from=10)
    expect(loss).to_have_attribute("data-points", "10", timeout=UI_TIMEOUT_MS)
    expect(step).to_have_attribute("data-step", "10")
    expect(page.locator("#sample-label")).to_have_text("step 10 (2 of 2)")
    expect(page.locator("#job-facts")).to_contain_text("2 checkpoints")
    shot(page, "21-after-rewind")

    for again in (11, 12):
        held.emit("step", again, 2)
    expect(loss).to_have_attribute("data-points", "12")
    expect(step).to_have_attribute("data-step", "12")
    held.end()
    expect(page.locator("#job-status")).to_have_text("cancelled")
    expect(loss).to_have_attribute("data-points", "12")
