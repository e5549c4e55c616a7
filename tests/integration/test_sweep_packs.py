"""Packed trials with real processes: a worker that takes one trial of a sweep claims its
queued siblings of the same pack key and trains them as one pack (workers/trainer/job.py,
workers/trainer/pack.py). Killed with kill -9, every trial resumes from its own checkpoint and
finishes exactly once; one trial cancelled, the others go on.

A stack of its own: one worker (so all four trials land in one pack; with two idle workers a
sweep's first trials spread over both), short lease and reconcile intervals (as
test_reliability); the killed worker is started again, as Kubernetes or compose would."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from devstack.stack import Process, Stack, StackConfig
from shared.schemas import JobPublic
from shared.state.jobs import JobRegistry
from shared.status import JobStatus
from shared.storage import JobKeys
from tests.conftest import wait_for
from tests.stack_plugin import client_for, running_stack
from trainyard.client import Client

OVERRIDES = {
    "TRAINYARD_LEASE_TTL_S": "3",
    "TRAINYARD_PACK_GATHER_S": "0.5",  # below a third of the lease TTL
    "TRAINYARD_RECONCILE_INTERVAL_S": "1",
    "TRAINYARD_RECONCILE_GRACE_S": "3",
    "TRAINYARD_VISIBILITY_TIMEOUT_S": "30",
    "TRAINYARD_MAX_ATTEMPTS": "3",
}
TOTAL = 2000  # steps of batch 8 on mnist-5k: long enough to kill or cancel mid-run
BASE: dict[str, Any] = {
    "task": "classifier",
    "mode": "fast",
    "batch_size": 8,
    "epochs": 4,
    "checkpoint_every": 100,
    "log_every": 25,
    "sample_every": 100_000,
}
LRS = [1e-3, 2e-3, 3e-3, 4e-3]


@pytest.fixture(scope="module")
def packs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("packs"))
    config = StackConfig.fresh(root, workers=1, preferred=False, overrides=OVERRIDES)
    with running_stack(config, logs=60) as stack:
        yield stack


@pytest.fixture(scope="module")
def api(packs: Stack) -> Iterator[Client]:
    with client_for(packs) as c:
        yield c


@pytest.fixture(scope="module")
def reg(packs: Stack) -> JobRegistry:
    return JobRegistry(packs.redis_client())


@pytest.fixture(autouse=True)
def workers_up(packs: Stack) -> Iterator[None]:
    """Every test starts and ends with the worker running (a test kills it)."""
    yield
    for worker in packs.workers:
        if not worker.alive():
            worker.start()
    wait_for(packs.workers_online, 60, "workers back online")


def packed_sweep(api: Client, reg: JobRegistry) -> list[str]:
    """A grid sweep of 4 learning rates, all in flight at once; its trials' job ids once
    one worker trains all four as one pack, each past its first checkpoint."""
    sweep = api.submit_sweep(
        {
            "base": BASE,
            "space": {"lr": {"type": "choice", "values": LRS}},
            "n_trials": len(LRS),
            "sampler": "grid",
            "parallel": len(LRS),
        }
    )

    def queued() -> list[str]:
        return [t.job_id for t in api.sweep(sweep.id).trials if t.job_id is not None]

    wait_for(lambda: len(queued()) == len(LRS), 60, "4 trials queued")
    ids = queued()

    def packed_and_checkpointed() -> bool:
        jobs = [api.get(i) for i in ids]
        return (
            all(j.status is JobStatus.RUNNING for j in jobs)
            and len({j.worker for j in jobs}) == 1
            and all((reg.get(j.id).checkpoint_step or 0) >= 100 for j in jobs)
        )

    wait_for(packed_and_checkpointed, 180, "one worker training the 4 trials as a pack")
    return ids


def worker_of(stack: Stack, job: JobPublic) -> Process:
    assert job.worker is not None
    return next(w for w in stack.workers if job.worker.startswith(f"{w.name}-"))


def finals(stack: Stack, job_id: str) -> int:
    c = stack.config
    s3 = Minio(
        f"127.0.0.1:{c.s3_port}", access_key=c.access_key, secret_key=c.secret_key, secure=False
    )
    objects = s3.list_objects(c.bucket, JobKeys(job_id).prefix, recursive=True)
    return sum((o.object_name or "").endswith("final/model.pt") for o in objects)


def test_kill_9_of_a_packed_worker_resumes_every_trial_once(
    packs: Stack, api: Client, reg: JobRegistry
) -> None:
    ids = packed_sweep(api, reg)
    victim = worker_of(packs, api.get(ids[0]))
    victim.signal(signal.SIGKILL)  # the whole pack's process, no goodbye
    victim.wait_exit(30)
    victim.start()  # restarted, as its supervisor would: it must resume, not start over
    for job_id in ids:
        done = api.wait(job_id, timeout=300)
        assert done.status is JobStatus.SUCCEEDED, done.error
        assert done.attempts == 2 and done.step == TOTAL
        starts = [e for e in api.metrics(job_id, kind="log") if "resumed_from" in e.info]
        resumed = starts[1].info["resumed_from"]
        assert resumed >= 100 and resumed % 100 == 0  # its own checkpoint, not step 0
        logged = [e.step for e in api.metrics(job_id, kind="step")]
        assert set(range(25, TOTAL + 1, 25)) <= set(logged)  # no gap across the crash
        statuses = [e.info["status"] for e in api.metrics(job_id, kind="status")]
        assert statuses.count("succeeded") == 1
        acquired = [e for e in reg.leases.history(job_id) if e["event"] == "acquired"]
        assert [int(e["fence"]) for e in acquired] == [1, 2]
        assert finals(packs, job_id) == 1


def test_cancelling_one_trial_of_a_pack_lets_the_others_finish(
    packs: Stack, api: Client, reg: JobRegistry
) -> None:
    ids = packed_sweep(api, reg)
    api.cancel(ids[1])
    cancelled = api.wait(ids[1], timeout=120)
    assert cancelled.status is JobStatus.CANCELLED
    # ended on its record as it left the pack, not when the pack ends
    assert all(api.get(i).status is JobStatus.RUNNING for i in (ids[0], *ids[2:]))
    assert cancelled.step < TOTAL and finals(packs, ids[1]) == 0
    for job_id in (ids[0], *ids[2:]):
        done = api.wait(job_id, timeout=300)
        assert done.status is JobStatus.SUCCEEDED, done.error
        assert done.attempts == 1 and done.step == TOTAL  # never restarted by the cancel
        assert finals(packs, job_id) == 1
