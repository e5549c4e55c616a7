"""Shared test helpers. The test stack and its clients live in tests/stack_plugin.py; the
integration tests' session stack is in tests/integration/conftest.py."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from devstack.stack import wait_for  # poll a condition; never a fixed sleep

__all__ = ["run_async", "wait_for"]

T = TypeVar("T")


def run_async(coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    """asyncio.run(coroutine) in a thread of its own: the browser tests' sync Playwright leaves
    an event loop running in the main thread, where asyncio.run() refuses to start."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine).result(timeout=timeout)


pytest_plugins = ["tests.stack_plugin"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
