"""A submit answers fast whatever the planner is doing: the impossible is refused before any
probe, probes are cached by effective shape with a TTL and limited per owner, and a new shape
whose probe is slow is accepted `queued`, being planned, then routed (or failed with the
422's message) when the probe ends, even if the API died meanwhile.

A stack of its own: one CPU class of 1 GiB (no class serves CUDA; a few specs need more),
a short submit budget, 3 probes per owner and minute, a reconciler every second."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from devstack.stack import Stack, StackConfig
from shared.auth import new_token
from shared.planning import plan_key, plan_queue
from shared.schemas import JobPublic, JobSpecAdapter
from shared.state.events import EventStream
from shared.state.jobs import JobRegistry
from shared.state.keys import RedisKeys
from shared.status import JobStatus
from shared.zoo import BUILTIN_DATASETS
from tests.conftest import wait_for
from tests.integration.test_cli import run
from tests.stack_plugin import running_stack
from trainyard.client import ApiError, Client

CACHE_TTL_S = 3600
PROBES_PER_MINUTE = 3
USERS = {name: new_token() for name in ("alice", "bob", "carol", "rate", "cuda")}
KEYS = RedisKeys("trainyard")
MNIST = BUILTIN_DATASETS["mnist-5k"]


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("planning"))
    overrides = {
        "TRAINYARD_MEMORY_CLASSES": "cpu:1",
        "TRAINYARD_PLAN_WAIT_S": "0.5",
        "TRAINYARD_PLAN_CACHE_TTL_S": str(CACHE_TTL_S),
        "TRAINYARD_PLAN_PROBES_PER_MINUTE": str(PROBES_PER_MINUTE),
        "TRAINYARD_RECONCILE_INTERVAL_S": "1",
        "TRAINYARD_RECONCILE_GRACE_S": "2",
        "TRAINYARD_API_TOKENS": ",".join(f"{name}:{token}" for name, token in USERS.items()),
    }
    config = StackConfig.fresh(root, workers=1, preferred=False, overrides=overrides)
    with running_stack(config) as stack:
        yield stack


@pytest.fixture(scope="module")
def redis(planned: Stack) -> Redis:
    return planned.redis_client()


@pytest.fixture(scope="module")
def reg(redis: Redis) -> JobRegistry:
    return JobRegistry(redis)


@pytest.fixture(scope="module")
def users(planned: Stack) -> Iterator[dict[str, Client]]:
    clients = {name: Client(planned.config.api_url, token) for name, token in USERS.items()}
    yield clients
    for c in clients.values():
        c.close()


@pytest.fixture
def quiet_planner(redis: Redis) -> None:
    """No probe asked or running: what another test asked for (in any order) is done, so it
    neither lands in this test's cache snapshot nor waits in the plan queue."""

    def quiet() -> bool:
        inflight = list(redis.scan_iter(f"{KEYS.prefix}:plan:inflight:*"))
        return redis.llen(plan_queue("trainyard")) == 0 and not inflight

    wait_for(quiet, 240, "the planner to finish the probes other tests asked for")


def key_of(body: dict[str, Any]) -> str:
    return plan_key(JobSpecAdapter.validate_python(body), MNIST.image, MNIST.num_classes)


def plan_entries(redis: Redis) -> set[str]:
    """Every plan-cache, in-flight, waiting and rate key, and the plan queue's messages."""
    found = {k.decode() for k in redis.scan_iter("trainyard:plan:*")}
    return found | {f"message:{i}" for i in range(redis.llen(plan_queue("trainyard")))}


def being_planned(job: JobPublic) -> bool:
    return (
        job.status is JobStatus.QUEUED
        and job.memory_class is None
        and job.pending is not None
        and job.pending.reason.startswith("being planned")
    )


def status_reasons(redis: Redis, job_id: str) -> list[tuple[str, str]]:
    events = EventStream(redis).read(job_id)
    return [(e.info["status"], e.info.get("reason", "")) for e in events if e.kind == "status"]


def stop(client: Client, job_id: str) -> None:
    """Cancel, unless it already finished (a 409)."""
    with contextlib.suppress(ApiError):
        client.cancel(job_id)


def test_a_device_no_class_serves_is_a_422_without_any_probe(
    users: dict[str, Client], redis: Redis, quiet_planner: None
) -> None:
    before = plan_entries(redis)
    with pytest.raises(ApiError) as info:
        users["cuda"].submit({"task": "classifier", "model": "book_mlp", "device": "cuda"})
    assert info.value.status_code == 422 and info.value.field == "device"
    assert info.value.message == "device: no memory class serves device 'cuda'"
    # Nothing was asked of the planner: no probe message, no cache, in-flight or rate key.
    assert plan_entries(redis) == before
    assert users["cuda"].list_jobs().count == 0


def test_crop_values_with_one_effective_shape_share_one_cache_key_with_a_ttl(
    users: dict[str, Client], redis: Redis, quiet_planner: None
) -> None:
    before = {k for k in plan_entries(redis) if k.count(":") == 2}  # trainyard:plan:<key>
    bodies = [
        {"task": "gan", "model": "conv_gan", "crop": crop, "max_steps": 1} for crop in (100, 200)
    ]
    jobs = [users["alice"].submit(body) for body in bodies]

    def routed() -> bool:
        return all(users["alice"].get(j.id).memory_class == "cpu" for j in jobs)

    wait_for(routed, 120, "both jobs routed")
    for job in jobs:
        stop(users["alice"], job.id)
    after = {k for k in plan_entries(redis) if k.count(":") == 2}
    key = f"trainyard:plan:{key_of(bodies[0])}"
    # One key for both crops: it is cached (now, or by a test that ran before with the same
    # shape) and no other key came with them.
    assert key in after and after - before <= {key}
    assert 0 < redis.ttl(key) <= CACHE_TTL_S


def test_a_new_shape_with_the_planner_stopped_is_accepted_then_settled_without_the_api(
    planned: Stack, users: dict[str, Client], reg: JobRegistry, redis: Redis, quiet_planner: None
) -> None:
    fits = {"task": "classifier", "model": "book_mlp", "max_steps": 3, "log_every": 1}
    # conv_cgan at 32x32, batch 4096: about 1.9 GiB, more than the 0.9 GiB the class allows.
    too_big = {"task": "cgan", "model": "conv_cgan", "resize": 32, "batch_size": 4096}
    planned.planner.stop()
    try:
        a, b = users["bob"].submit(fits), users["bob"].submit(too_big)
        for job in (a, b):  # answered within the budget: queued, and says why it waits
            assert being_planned(job), job
            assert being_planned(users["bob"].get(job.id))
        assert redis.llen(plan_queue("trainyard")) == 2  # one probe asked per shape
        # The CLI says so too (the SDK: JobPublic.being_planned and pending.reason).
        shown = run(planned, "show", a.id, token=USERS["bob"]).stdout
        assert "queued (being planned)" in shown and "pending   being planned:" in shown
        listing = run(planned, "jobs", token=USERS["bob"]).stdout.splitlines()
        assert any(b.id in line and "queued (being planned)" in line for line in listing), listing
        # The API dies with both jobs accepted: the planner alone must settle them.
        planned.api.signal(signal.SIGKILL)
        assert planned.api.wait_exit(10)
    finally:
        planned.planner.start()

    def settled() -> bool:
        return reg.get(a.id).status.is_terminal() and reg.get(b.id).status.is_terminal()

    wait_for(settled, 240, "both jobs settled by the planner worker")
    ran, failed = reg.get(a.id), reg.get(b.id)
    assert ran.status is JobStatus.SUCCEEDED, ran.error
    assert ran.memory_class == "cpu" and ran.predicted_peak_cpu_bytes
    assert ("queued", "planned: fits cpu") in [
        (s, r.split(" (")[0]) for s, r in status_reasons(redis, a.id)
    ]
    assert failed.status is JobStatus.FAILED and failed.error
    assert failed.error.startswith("batch_size: needs ") and "largest class is cpu" in failed.error
    assert ("failed", failed.error) in status_reasons(redis, b.id)

    planned.restart(planned.api, planned.ready)
    # Now the probe is cached: the same spec is a 422 at once, with the same message.
    with pytest.raises(ApiError) as info:
        users["bob"].submit(too_big)
    assert info.value.status_code == 422 and info.value.field == "batch_size"
    assert info.value.message == failed.error


def test_one_slow_shape_does_not_hold_up_another(
    users: dict[str, Client], reg: JobRegistry, redis: Redis
) -> None:
    slow = {"task": "gan", "model": "book_conv_gan", "resize": 128, "batch_size": 8}
    quick = {"task": "gan", "model": "conv_gan", "resize": 64, "max_steps": 1}
    first = users["carol"].submit(slow)
    second = users["carol"].submit(quick)
    assert being_planned(first) and being_planned(second)
    wait_for(lambda: users["carol"].get(second.id).memory_class is not None, 120, "the quick route")
    # Probes run side by side: the slow one (tens of seconds) is still being planned.
    assert redis.hexists(KEYS.job(first.id), "planning")
    assert being_planned(users["carol"].get(first.id))
    for job in (first, second):
        stop(users["carol"], job.id)


def test_probes_are_limited_per_owner(
    planned: Stack, users: dict[str, Client], redis: Redis
) -> None:
    new_shapes: list[dict[str, Any]] = [
        {"task": "gan", "model": "conv_gan", "mode": "book"},
        {"task": "cgan", "model": "conv_cgan", "mode": "book"},
        {"task": "gan", "model": "conv_gan", "resize": 32},
    ]
    one_more = {"task": "cgan", "model": "conv_cgan", "resize": 64, "max_steps": 1}
    rate = users["rate"]
    jobs = [rate.submit({**body, "max_steps": 1}) for body in new_shapes]
    headers = {"Authorization": f"Bearer {USERS['rate']}"}
    refused = httpx.post(f"{planned.config.api_url}/v1/jobs", json=one_more, headers=headers)
    assert refused.status_code == 429, refused.text
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "TRAINYARD_PLAN_PROBES_PER_MINUTE" in refused.json()["error"]["message"]
    assert rate.list_jobs().count == PROBES_PER_MINUTE  # nothing stored
    assert not redis.exists(KEYS.plan_inflight(key_of(one_more)))  # nothing asked
    # Per owner: another owner may ask for that shape; then it costs "rate" no probe.
    jobs.append(users["alice"].submit(one_more))
    jobs.append(rate.submit(one_more))
    for job in jobs:
        stop(users["alice"] if job.owner == "alice" else rate, job.id)


def test_the_reconciler_routes_a_job_left_waiting_on_a_cached_probe(
    users: dict[str, Client], reg: JobRegistry, redis: Redis
) -> None:
    # As if the process that should route it died: a job waiting on a probe that is cached,
    # on no waiting set, with no queue message.
    body = {"task": "gan", "model": "conv_gan", "max_steps": 1}
    key = key_of(body)
    probed = users["alice"].submit(body)  # its shape probed (cached), whatever ran before
    wait_for(lambda: users["alice"].get(probed.id).memory_class == "cpu", 120, "the probe")
    stop(users["alice"], probed.id)
    assert redis.exists(KEYS.plan_cache(key))
    job = reg.create(JobSpecAdapter.validate_python(body), "alice", planning=key)
    wait_for(lambda: reg.get(job.id).memory_class == "cpu", 60, "the reconciler to route it")
    routed = reg.get(job.id)
    assert routed.predicted_peak_cpu_bytes and not redis.hexists(KEYS.job(job.id), "planning")
    assert any(
        s == "queued" and r.startswith("planned: ") for s, r in status_reasons(redis, job.id)
    )
    stop(users["alice"], job.id)
