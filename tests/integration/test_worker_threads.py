"""Workers size their threads to their CPU share and name themselves uniquely.

A stack of its own: two workers started on this one host without `-n`, as replicas that share
a hostname are (host networking, --scale). devstack gives each half of the machine's cores;
worker-1 is told 3 cores instead (TRAINYARD_WORKER_CPUS). What is checked is what each pool
process reports after setting torch's threads, through GET /v1/workers."""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.stack import Stack, StackConfig
from shared.schemas import ClassifierSpec
from shared.state.heartbeats import FORGET_AFTER_S, ONLINE_WITHIN_S, WorkerRegistry
from tests.conftest import wait_for
from tests.stack_plugin import client_for, running_stack


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig.fresh(
        Path(tmp_path_factory.mktemp("twins")),
        workers=2,
        preferred=False,
        worker_overrides=[{}, {"TRAINYARD_WORKER_CPUS": "3"}],
    )
    config.named_workers = False
    with running_stack(config) as stack:
        yield stack


def reported(stack: Stack) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {stack.config.api_token}"}
    r = httpx.get(f"{stack.config.api_url}/v1/workers", headers=headers, timeout=10)
    r.raise_for_status()
    return [w for w in r.json() if w["torch_threads"] is not None]


def test_threads_match_the_cpu_share(twins: Stack) -> None:
    wait_for(lambda: len(reported(twins)) == 2, 60, "both workers' thread reports")
    workers = reported(twins)
    share = len(os.sched_getaffinity(0)) / 2
    by_quota = sorted(workers, key=lambda w: w["cpu_quota"])
    assert [w["cpu_quota"] for w in by_quota] == [pytest.approx(share), 3.0]
    for worker, quota in zip(by_quota, (share, 3.0), strict=True):
        threads = max(1, math.floor(quota))  # concurrency 1
        assert worker["concurrency"] == 1
        assert worker["torch_threads"] == threads
        assert worker["interop_threads"] == threads
        assert worker["loader_threads"] == threads
        assert worker["writer_threads"] == min(threads, 2)


def test_same_hostname_distinct_identities_both_take_jobs(twins: Stack) -> None:
    wait_for(lambda: len(reported(twins)) == 2, 60, "both workers' heartbeats")
    names = {w["name"] for w in reported(twins)}
    assert len(names) == 2
    host = socket.gethostname()
    assert all(n.startswith(f"worker@{host}-") for n in names), names
    spec = ClassifierSpec(max_steps=30, checkpoint_every=10, sample_every=1000, log_every=5)
    with client_for(twins) as api:
        jobs = [api.submit(spec.model_copy(update={"name": f"twin-{i}"})) for i in range(6)]
        done = [api.wait(job.id, timeout=300, poll=0.2) for job in jobs]
    assert all(d.status.value == "succeeded" for d in done), [d.error for d in done]
    assert {d.worker for d in done} == names


def test_a_killed_workers_records_go_away(twins: Stack) -> None:
    """A worker killed without a goodbye (SIGKILL, a lost node) leaves its heartbeat record
    and thread report behind; each new replica has a new name, so they would pile up. The
    thread report expires with the heartbeats, and the reconciler forgets old records."""
    registry = WorkerRegistry(twins.redis_client())
    ghost = f"worker@gone-{os.getpid()}"
    registry.report_threads(ghost, 1, {"torch_threads": 1})
    registry.heartbeat(ghost, {"memory_class": "cpu", "device": "cpu"})
    ttl = registry.redis.ttl(registry._threads_key(ghost))
    assert 0 < ttl <= 3 * ONLINE_WITHIN_S
    # Its last heartbeat, an hour and more ago: the API's reconciler pass drops it.
    old = json.loads(registry.redis.hget(registry.keys.workers(), ghost) or "{}")
    old["seen"] -= FORGET_AFTER_S + 60
    registry.redis.hset(registry.keys.workers(), ghost, json.dumps(old))
    wait_for(
        lambda: registry.redis.hget(registry.keys.workers(), ghost) is None,
        60,
        "the reconciler to forget the killed worker",
    )
    assert len(reported(twins)) == 2  # the live workers are kept
