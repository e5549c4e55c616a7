"""A job accepted while its model and data shape are being planned (issue 14's submit
contract), as the dashboard shows it, in Debian's chromium against a real stack: the job list
and the job page say it is being planned, with the planner's reason, and no queue position.

The job is stored as the API stores such a job (queued, on a plan key's waiting set, no
queue message) under a plan key no probe will ever answer, so it stays being planned for
the test; it is cancelled at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from devstack.stack import Stack
from shared.schemas import ClassifierSpec
from shared.state.jobs import JobRegistry
from tests.e2e.browser import UI_TIMEOUT_MS, open_job, shot, sign_in
from trainyard.client import Client


@pytest.fixture
def being_planned(stack: Stack, client: Client) -> Iterator[str]:
    registry = JobRegistry(stack.redis_client())
    job = registry.create(
        ClassifierSpec(name="being planned"), "dev", planning="e2e-no-probe-answers-this"
    )
    yield job.id
    client.cancel(job.id)


def test_a_job_being_planned_says_so_in_the_list_and_on_its_page(
    page: Page, base_url: str, token: str, client: Client, being_planned: str
) -> None:
    found = client.get(being_planned)
    assert found.being_planned and found.pending is not None
    assert found.pending.reason.startswith("being planned")

    sign_in(page, base_url, token)
    row = page.locator(f'#jobs-table tr[data-job-id="{being_planned}"]')
    expect(row).to_contain_text("being planned", timeout=UI_TIMEOUT_MS)
    expect(row).not_to_contain_text("in queue")
    shot(page, "planning-list")

    open_job(page, being_planned)
    expect(page.locator("#job-pending")).to_have_text(found.pending.reason, timeout=UI_TIMEOUT_MS)
    shot(page, "planning-job")
