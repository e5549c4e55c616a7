"""A real local stack for the session: redis-server, SeaweedFS S3, the API (uvicorn) and a
Celery worker, each its own process on free loopback ports. No mocks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from minio import Minio
from redis import Redis

from devstack.stack import Stack, StackConfig
from shared.auth import new_token
from shared.state.jobs import JobRegistry
from shared.storage import S3ArtifactStore
from tests.stack_plugin import client_for, http_for, running_stack
from trainyard.client import Client

UPLOAD_LIMIT = 4_000_000  # small, so the 413 path is tested without sending 256 MiB
QUEUE_CAP = 20  # per owner; small enough to reach in a test
# Users besides "dev" (the stack's own): two owners, an admin, one for the queue cap, one whose
# jobs are a playground (test_params.py; the fuzzer's, on its own stack), and one whose every
# job the paging test knows (tests run in any order: no other test may add to its list).
USERS = {name: new_token() for name in ("alice", "bob", "root", "carol", "fuzz", "dana")}
OVERRIDES = {
    "TRAINYARD_UPLOAD_MAX_BYTES": str(UPLOAD_LIMIT),
    "TRAINYARD_MAX_QUEUED_PER_OWNER": str(QUEUE_CAP),
    # A submit here waits for its shape's probe (up to 20 s, under the SDK's 30 s timeout),
    # so most jobs are routed when the POST answers; the short budget is
    # test_planning_api.py's subject, on a stack of its own.
    "TRAINYARD_PLAN_WAIT_S": "20",
    # GAN scores of 200 images, not 1,000: the zoo's 128-pixel GANs generate them on a CPU.
    "TRAINYARD_QUALITY_SAMPLES": "200",
    # ...and uploads of a few dozen images are scored (4 test images: FID on CPU stays quick).
    "TRAINYARD_QUALITY_MIN_TEST": "2",
    "TRAINYARD_API_TOKENS": ",".join(
        f"{name}:{token}" + (":admin" if name == "root" else "") for name, token in USERS.items()
    ),
}


def session_config(root: Path) -> StackConfig:
    """The session stack's configuration (one worker, the users and limits above) under
    `root`; test_schemathesis.py starts a copy of its own with it."""
    return StackConfig.fresh(root, workers=1, preferred=False, overrides=OVERRIDES)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The session stack of this directory."""
    with running_stack(session_config(Path(tmp_path_factory.mktemp("stack")))) as stack:
        yield stack


@pytest.fixture(scope="session")
def client(stack: Stack) -> Iterator[Client]:
    """This directory's session stack, as its own user ("dev")."""
    with client_for(stack) as c:
        yield c


@pytest.fixture(scope="session")
def http(stack: Stack) -> Iterator[httpx.Client]:
    """Raw HTTP as the local user "dev", for what the SDK does not expose (bad input)."""
    with http_for(stack) as c:
        yield c


@pytest.fixture(scope="session")
def as_user(stack: Stack) -> Iterator[dict[str, Client]]:
    """An SDK client per test user: as_user["alice"].submit(...)."""
    clients = {name: Client(stack.config.api_url, token) for name, token in USERS.items()}
    yield clients
    for c in clients.values():
        c.close()


@pytest.fixture(scope="session")
def redis(stack: Stack) -> Redis:
    return stack.redis_client()


@pytest.fixture(scope="session")
def registry(redis: Redis) -> JobRegistry:
    return JobRegistry(redis)


@pytest.fixture(scope="session")
def s3(stack: Stack) -> S3ArtifactStore:
    return S3ArtifactStore.from_settings(stack.config.settings())


@pytest.fixture(scope="session")
def minio_client(stack: Stack) -> Minio:
    c = stack.config
    return Minio(
        f"127.0.0.1:{c.s3_port}", access_key=c.access_key, secret_key=c.secret_key, secure=False
    )
