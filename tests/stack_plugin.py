"""The test stack, up and down, and its clients: one place for the integration, e2e and
reliability tests. Registered once, by `pytest_plugins` in tests/conftest.py.

A test directory's conftest (or a module wanting a stack of its own) builds a
`devstack.stack.StackConfig` and yields from `running_stack`, and its `client` fixture yields
from `client_for`. (A session-scoped `client` here would be computed once, for the first
directory's stack, and handed to every other directory's tests.)"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from devstack.stack import Stack, StackConfig
from trainyard.client import Client


@contextmanager
def running_stack(config: StackConfig, logs: int = 40) -> Iterator[Stack]:
    """The local stack of `config` (redis-server, SeaweedFS S3, the API, the Celery workers),
    up for the `with` block. Afterwards, pass or fail, its last `logs` lines per process are
    printed (pytest shows them for a failed test) and every process is stopped.

    Raises whatever `Stack.up` raises when a process does not come up (it is still stopped)."""
    stack = Stack(config)
    try:
        stack.up()
        yield stack
    finally:
        print(stack.logs(logs))
        stack.down()


@contextmanager
def http_for(stack: Stack, timeout: float = 60) -> Iterator[httpx.Client]:
    """Raw HTTP as the stack's own user ("dev"), for what the SDK does not expose (bad input,
    headers), closed after the `with` block."""
    headers = {"Authorization": f"Bearer {stack.config.api_token}"}
    with httpx.Client(base_url=stack.config.api_url, headers=headers, timeout=timeout) as c:
        yield c


@contextmanager
def client_for(stack: Stack) -> Iterator[Client]:
    """An SDK client as the stack's own user ("dev"), closed after the `with` block."""
    with Client(stack.config.api_url, stack.config.api_token) as c:
        yield c
