"""Browser tests of the dashboard against a real local stack (redis-server, SeaweedFS S3, the
API under uvicorn, a Celery worker), like tests/integration, driven by Debian's chromium.

Skipped, with the reason, only where /usr/bin/chromium is absent (apt-get install chromium)."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, sync_playwright

from devstack.stack import Stack, StackConfig
from shared.status import JobStatus
from tests.e2e.browser import CHROMIUM, UI_TIMEOUT_MS, VIEWPORT, launch, shot
from tests.stack_plugin import client_for, http_for, running_stack
from trainyard.client import Client

# The small GAN of these tests: 60 steps, a sample grid every 15 (4 grids), metrics every 10.
SMALL_GAN: dict[str, Any] = {
    "task": "gan",
    "model": "conv_gan",
    "max_steps": 60,
    "sample_every": 15,
    "batch_size": 16,
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: drives the dashboard in Debian's chromium")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[FAILED] = report.failed  # the page fixture screenshots failures


FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM}: apt-get install -y chromium")
    return CHROMIUM


@pytest.fixture(scope="session")
def stack(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The session stack of this directory."""
    root = tmp_path_factory.mktemp("e2e-stack")
    with running_stack(StackConfig.fresh(Path(root), workers=1, preferred=False)) as stack:
        yield stack


@pytest.fixture(scope="session")
def client(stack: Stack) -> Iterator[Client]:
    """This directory's session stack, as its own user ("dev")."""
    with client_for(stack) as c:
        yield c


@pytest.fixture(scope="session")
def base_url(stack: Stack) -> str:
    return stack.config.api_url


@pytest.fixture(scope="session")
def token(stack: Stack) -> str:
    """The stack's own user, "dev"."""
    return stack.config.api_token


@pytest.fixture(scope="session")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with http_for(stack, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def reference_classifier(client: Client) -> None:
    """A GAN's first quality score on a data set trains its reference classifier (minutes on a
    loaded CPU; cached in the object store after, workers/trainer/reference.py). Done here,
    by a one-step GAN, so that no browser test's job timeout includes it."""
    spec = {**SMALL_GAN, "max_steps": 1, "sample_every": 1, "name": "e2e reference classifier"}
    job = client.wait(client.submit(spec).id, timeout=900, poll=1)
    assert job.status is JobStatus.SUCCEEDED, job.error


@pytest.fixture(scope="session")
def finished_gans(client: Client, reference_classifier: None) -> tuple[str, str]:
    """Two small GANs with different seeds, trained to the end (submitted over the API)."""
    spec = {**SMALL_GAN, "batch_size": 8}  # half the images of the form's job: quicker
    ids = [client.submit({**spec, "seed": seed, "name": f"e2e seed {seed}"}).id for seed in (0, 1)]
    for job_id in ids:
        job = client.wait(job_id, timeout=240, poll=0.3)
        assert job.status is JobStatus.SUCCEEDED, job.error
    return ids[0], ids[1]


@pytest.fixture(scope="session")
def finished_classifier(client: Client) -> str:
    """A small book_cnn trained to the end (150 steps of 128: about 0.93 held-out accuracy),
    to classify images with."""
    spec = {"task": "classifier", "max_steps": 150, "name": "e2e classifier"}
    job = client.wait(client.submit(spec).id, timeout=240, poll=0.3)
    assert job.status is JobStatus.SUCCEEDED, job.error
    return job.id


@pytest.fixture(scope="session")
def browser(chromium: Path) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, base_url: str, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context (no storage shared between tests) that fails the test on an
    uncaught script error, a CSP violation or any request to another origin."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    problems: list[str] = []
    origin = urlsplit(base_url).netloc

    def on_request(req: Request) -> None:
        url = urlsplit(req.url)
        if url.scheme in ("http", "https") and url.netloc != origin:
            problems.append(f"request to another origin: {req.url}")

    page.on("pageerror", lambda error: problems.append(f"uncaught error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console: {message.text}")
            if "Content Security Policy" in message.text
            or (message.type == "error" and "Failed to load resource" not in message.text)
            else None
        ),
    )
    page.on("request", on_request)
    yield page
    if request.node.stash.get(FAILED, False):
        shot(page, f"FAILED-{request.node.name}")
    context.close()
    assert not problems, problems
