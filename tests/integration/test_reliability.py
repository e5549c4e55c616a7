"""Crash safety with real processes and real signals: kill -9, SIGTERM, Redis and S3 restarts,
redeliveries, corrupt checkpoints, injected OOMs, the attempt budget.

A stack of its own: two workers, short lease and reconcile intervals, and a visibility timeout
shorter than the jobs, so Redis redelivers running jobs (the lease must drop the duplicates)."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from minio import Minio
from redis import Redis

from devstack.stack import Process, Stack, StackConfig
from shared.planning import predict
from shared.schemas import CheckpointManifest, JobEvent, JobPublic, JobSpecAdapter
from shared.state.jobs import JobRegistry
from shared.status import JobStatus
from shared.storage import JobKeys
from tests.conftest import wait_for
from tests.stack_plugin import client_for, running_stack
from trainyard.client import Client
from workers.trainer.probe import probe

LEASE_TTL_S = 3
GRACE_S = 30
S3_RETRY_S = 20
OVERRIDES = {
    "TRAINYARD_LEASE_TTL_S": str(LEASE_TTL_S),
    "TRAINYARD_PACK_GATHER_S": "0.5",  # below a third of the lease TTL
    "TRAINYARD_RECONCILE_INTERVAL_S": "1",
    "TRAINYARD_RECONCILE_GRACE_S": "3",
    "TRAINYARD_VISIBILITY_TIMEOUT_S": "6",
    "TRAINYARD_MAX_ATTEMPTS": "3",
    "TRAINYARD_SHUTDOWN_GRACE_S": str(GRACE_S),
    "TRAINYARD_S3_RETRY_S": str(S3_RETRY_S),
    "TRAINYARD_FAULT_INJECTION": "true",
    "TRAINYARD_SSE_PING_S": "1",  # SSE readers get heartbeats between events
}
# ~4,000 steps of batch 1 (about 10-20 s on a CPU): long enough to hit mid-run.
LONG: dict[str, Any] = {
    "task": "classifier",
    "batch_size": 1,
    "epochs": 1,
    "mode": "fast",
    "lr": 1e-3,
    "checkpoint_every": 250,
    "log_every": 25,
    "sample_every": 100_000,
}


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("chaos"))
    config = StackConfig.fresh(root, workers=2, preferred=False, overrides=OVERRIDES)
    with running_stack(config, logs=60) as stack:
        yield stack


@pytest.fixture(scope="module")
def api(chaos: Stack) -> Iterator[Client]:
    with client_for(chaos) as c:
        yield c


@pytest.fixture(scope="module")
def reg(chaos: Stack) -> JobRegistry:
    return JobRegistry(chaos.redis_client())


@pytest.fixture(scope="module")
def s3(chaos: Stack) -> Minio:
    c = chaos.config
    return Minio(
        f"127.0.0.1:{c.s3_port}", access_key=c.access_key, secret_key=c.secret_key, secure=False
    )


@pytest.fixture(autouse=True)
def workers_up(chaos: Stack) -> Iterator[None]:
    """Every test starts and ends with both workers running (tests kill them)."""
    yield
    for worker in chaos.workers:
        if not worker.alive():
            worker.start()
    wait_for(chaos.workers_online, 60, "workers back online")


def worker_of(chaos: Stack, job: JobPublic) -> Process:
    assert job.worker is not None
    return next(w for w in chaos.workers if job.worker.startswith(f"{w.name}-"))


def submit_with_faults(
    api: Client, reg: JobRegistry, spec: dict[str, Any], **faults: int | str
) -> JobPublic:
    """Write the fault plan, then submit a job of its name: the plan is there before any worker
    can start the job (writing it after submit raced a fast worker: the crash did not happen)."""
    name = f"chaos-{uuid.uuid4().hex[:12]}"
    plan: dict[Any, Any] = dict(faults)
    reg.redis.hset(reg.keys.faults(name), mapping=plan)
    return api.submit({**spec, "name": name})


def step_events(api: Client, job_id: str) -> list[JobEvent]:
    return api.metrics(job_id, kind="step")


def starts(api: Client, job_id: str) -> list[JobEvent]:
    return [e for e in api.metrics(job_id, kind="log") if "resumed_from" in e.info]


def statuses(api: Client, job_id: str) -> list[dict[str, Any]]:
    return [e.info for e in api.metrics(job_id, kind="status")]


def no_gaps(api: Client, job_id: str, every: int, total: int) -> None:
    logged = {e.step for e in step_events(api, job_id)}
    assert set(range(every, total + 1, every)) <= logged


def test_kill_9_after_first_checkpoint_resumes_on_another_worker(
    chaos: Stack, api: Client, reg: JobRegistry, s3: Minio
) -> None:
    job = api.submit(LONG)
    wait_for(lambda: (reg.get(job.id).checkpoint_step or 0) >= 250, 120, "a checkpoint")
    victim = worker_of(chaos, api.get(job.id))
    victim.signal(signal.SIGKILL)  # the whole worker, no goodbye
    done = api.wait(job.id, timeout=180)
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert done.attempts == 2 and done.step == 4000
    resumed = starts(api, job.id)[1].info["resumed_from"]
    assert resumed >= 250 and resumed % 250 == 0  # continued from a checkpoint, not from 0
    no_gaps(api, job.id, 25, 4000)
    acquired = [e for e in reg.leases.history(job.id) if e["event"] == "acquired"]
    assert [int(e["fence"]) for e in acquired] == [1, 2]
    assert [s["status"] for s in statuses(api, job.id)].count("succeeded") == 1
    finals = [
        o
        for o in s3.list_objects(chaos.config.bucket, JobKeys(job.id).prefix, recursive=True)
        if (o.object_name or "").endswith("final/model.pt")
    ]
    assert len(finals) == 1


def test_redelivered_message_is_dropped_while_the_lease_is_held(
    chaos: Stack, api: Client, reg: JobRegistry
) -> None:
    """The visibility timeout (6 s) is shorter than the job: Redis hands the message to the
    other worker while the first still trains. The lease turns it away; steps never overlap."""
    job = api.submit({**LONG, "epochs": 2})
    done = api.wait(job.id, timeout=240)
    assert done.status is JobStatus.SUCCEEDED, done.error
    history = reg.leases.history(job.id)
    acquired = [e for e in history if e["event"] == "acquired"]
    dropped = [e for e in history if e["event"] == "dropped"]
    assert len(acquired) == 1 and done.attempts == 1
    assert dropped, "expected at least one redelivery to be turned away"
    assert all(e["holder"].endswith(acquired[0]["worker"]) for e in dropped)
    steps = [e.step for e in step_events(api, job.id)]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # one writer, in order


def test_sigterm_mid_epoch_checkpoints_requeues_and_resumes(
    chaos: Stack, api: Client, reg: JobRegistry
) -> None:
    job = api.submit(LONG)
    wait_for(lambda: api.get(job.id).step >= 400, 120, "the job to be mid-epoch")
    victim = worker_of(chaos, api.get(job.id))
    sent = time.time()
    victim.signal(signal.SIGTERM, group=False)  # like Kubernetes: PID 1 only
    assert victim.wait_exit(GRACE_S), "worker did not shut down within the grace period"
    queued = [e for e in api.metrics(job.id, kind="status") if e.info["status"] == "queued"]
    assert queued[0].info["reason"] == "submitted"
    requeued = queued[1]
    assert requeued.info["reason"] == "worker shutting down" and requeued.time - sent < GRACE_S
    done = api.wait(job.id, timeout=180)
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert done.requeues == 1 and done.attempts == 2
    stopped = next(e for e in api.metrics(job.id, kind="log") if e.info.get("stopped"))
    assert stopped.info["stopped"] == "shutdown"
    assert starts(api, job.id)[1].info["resumed_from"] == stopped.step  # checkpointed mid-epoch
    no_gaps(api, job.id, 25, 4000)


def test_redis_restart_with_21_jobs(chaos: Stack, api: Client) -> None:
    small = {"task": "classifier", "max_steps": 40, "checkpoint_every": 20, "log_every": 10}
    ids = [api.submit({**small, "seed": i}).id for i in range(21)]
    wait_for(lambda: any(api.get(i).status is JobStatus.RUNNING for i in ids), 60, "one running")
    chaos.restart(chaos.redis, chaos.redis_client().ping)  # SIGTERM: Redis writes its AOF
    for job_id in ids:
        done = api.wait(job_id, timeout=300)
        assert done.status is JobStatus.SUCCEEDED, (job_id, done.error)


def test_short_s3_outage_is_ridden_out(chaos: Stack, api: Client) -> None:
    job = api.submit({**LONG, "checkpoint_every": 100})
    wait_for(lambda: api.get(job.id).step >= 300, 120, "the job to be running")
    chaos.s3.signal(signal.SIGKILL)
    assert chaos.s3.wait_exit(10)
    time.sleep(3)
    chaos.s3.start()  # back within the retry budget (it takes a few seconds to start)
    done = api.wait(job.id, timeout=240)
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert done.attempts == 1


def test_long_s3_outage_fails_the_job_clearly_and_keeps_the_checkpoint(
    chaos: Stack, api: Client, s3: Minio
) -> None:
    job = api.submit({**LONG, "checkpoint_every": 100})
    wait_for(lambda: api.get(job.id).step >= 300, 120, "the job to be running")
    chaos.s3.signal(signal.SIGKILL)
    assert chaos.s3.wait_exit(10)
    try:
        done = api.wait(job.id, timeout=S3_RETRY_S + 60)
    finally:
        chaos.s3.start()
        wait_for(chaos.s3_ready, 60, "S3 back")
    assert done.status is JobStatus.FAILED
    assert done.error and "object storage unreachable" in done.error
    raw = s3.get_object(chaos.config.bucket, JobKeys(job.id).manifest).read()
    manifest = CheckpointManifest.model_validate_json(raw)
    assert manifest.step >= 100  # the last good checkpoint is still there and valid
    assert s3.stat_object(chaos.config.bucket, manifest.key).size == manifest.size


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(
    chaos: Stack, api: Client, reg: JobRegistry, s3: Minio
) -> None:
    job = api.submit(LONG)
    wait_for(lambda: (reg.get(job.id).checkpoint_step or 0) >= 500, 120, "two checkpoints")
    worker_of(chaos, api.get(job.id)).signal(signal.SIGKILL)
    keys = JobKeys(job.id)
    manifest = CheckpointManifest.model_validate_json(
        s3.get_object(chaos.config.bucket, keys.manifest).read()
    )
    garbage = b"not a checkpoint"
    import io

    s3.put_object(chaos.config.bucket, manifest.key, io.BytesIO(garbage), len(garbage))
    done = api.wait(job.id, timeout=180)
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert starts(api, job.id)[1].info["resumed_from"] == manifest.history[0].step


def test_injected_oom_picks_the_micro_batch_the_planner_predicts_fits(
    chaos: Stack, api: Client, reg: JobRegistry
) -> None:
    spec = {
        "task": "classifier",
        "batch_size": 64,
        "max_steps": 30,
        "checkpoint_every": 5,
        "log_every": 1,
    }
    # Pretend the device has room for a micro-batch of 16 but not 17: the planner must pick
    # 16 (blind halving would pick 32 and fail again).
    result = probe(JobSpecAdapter.validate_python(spec), (1, 28, 28), 10)
    budget = (predict(result, 16)[0] + predict(result, 17)[0]) // 2
    job = submit_with_faults(api, reg, spec, oom_at_step=7, attempts="1", oom_budget_bytes=budget)
    done = api.wait(job.id, timeout=120)
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert done.micro_batch_size == 16 and done.spec.batch_size == 64 and done.attempts == 2
    reasons = [s.get("reason", "") for s in statuses(api, job.id)]
    assert any("out of memory: micro-batch 16, 4x accumulation" in r for r in reasons), reasons
    second = starts(api, job.id)[1].info
    assert second["micro_batch"] == 16 and second["resumed_from"] == 5


def test_a_non_finite_loss_fails_the_job_and_keeps_the_last_good_checkpoint(
    chaos: Stack, api: Client, reg: JobRegistry, s3: Minio
) -> None:
    """BCE clamps its log, so real runs rarely get a NaN: the fault plan makes step 23's
    losses NaN. The job fails at once (a retry would diverge again), naming the step, and the
    checkpoint of step 20 stays the newest."""
    spec = {"task": "classifier", "max_steps": 40, "checkpoint_every": 10, "log_every": 5}
    job = submit_with_faults(api, reg, spec, nan_at_step=23)
    done = api.wait(job.id, timeout=180)
    assert done.status is JobStatus.FAILED
    assert done.error == (
        "diverged at step 23: non-finite loss; the last good checkpoint is step 20"
    ), done.error
    assert done.attempts == 1
    assert reg.get(job.id).checkpoint_step == 20
    manifest = CheckpointManifest.model_validate_json(
        s3.get_object(chaos.config.bucket, JobKeys(job.id).manifest).read()
    )
    assert manifest.step == 20
    assert max(e.step for e in step_events(api, job.id)) == 20  # nothing non-finite logged


def test_a_job_that_always_crashes_fails_after_the_budget(
    chaos: Stack, api: Client, reg: JobRegistry
) -> None:
    spec = {"task": "classifier", "max_steps": 50, "log_every": 1}
    job = submit_with_faults(api, reg, spec, exit_at_step=3)
    done = api.wait(job.id, timeout=180)
    assert done.status is JobStatus.FAILED
    assert done.attempts == 3 and done.error and "gave up after 3 attempts" in done.error


def test_queued_job_whose_message_vanished_is_resent(
    chaos: Stack, api: Client, reg: JobRegistry
) -> None:
    # Stop consuming, lose the message, and let the reconciler notice.
    redis: Redis = reg.redis
    for worker in chaos.workers:
        worker.signal(signal.SIGTERM, group=False)
    for worker in chaos.workers:
        assert worker.wait_exit(GRACE_S)
    job = api.submit({"task": "classifier", "max_steps": 5})
    redis.delete("trainyard")  # the queue list: the message is gone
    for worker in chaos.workers:
        worker.start()
    done = api.wait(job.id, timeout=120)
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert any("message was lost" in s.get("reason", "") for s in statuses(api, job.id))


def test_a_resume_rewinds_the_stream_and_readers_get_each_step_once(
    chaos: Stack, api: Client, reg: JobRegistry
) -> None:
    """kill -9 at step 15 once the checkpoint of step 10 is committed: the successor writes a
    rewind to step 10 with its attempt. /metrics and a reader that connects afterwards get each
    step once, from the attempt that went on; a reader following live gets steps 11-15 twice,
    with the rewind between, and keeps each step once by applying it."""
    spec = {
        "task": "classifier",
        "max_steps": 20,
        "checkpoint_every": 10,
        "log_every": 1,
        "sample_every": 5,
    }
    job = submit_with_faults(api, reg, spec, exit_at_step=15, attempts="1")
    live: list[JobEvent] = []

    def follow() -> None:
        with Client(chaos.config.api_url, chaos.config.api_token) as own:
            for event in own.events(job.id):  # until the terminal status
                live.append(event)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    done = api.wait(job.id, timeout=180)
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert done.attempts == 2, "the injected crash did not happen"
    reader.join(timeout=30)
    assert not reader.is_alive()

    # The stream holds both attempts' steps 11-15; every entry names its attempt.
    raw: Any = reg.redis.xrange(reg.keys.events(job.id))
    stored = [json.loads(fields.get(b"e") or fields["e"]) for _, fields in raw]
    assert all(isinstance(e.get("attempt"), int) for e in stored), stored
    assert [e["step"] for e in stored if e["kind"] == "step"].count(15) == 2
    rewinds = [e for e in stored if e["kind"] == "rewind"]
    assert [(e["step"], e["attempt"]) for e in rewinds] == [(10, 2)]
    first_of_2 = next(e for e in stored if e["attempt"] == 2 and e["kind"] != "status")
    assert first_of_2["kind"] == "rewind"  # before any step of the new attempt

    def kept(events: list[JobEvent], kind: str) -> list[tuple[int, int]]:
        return [(e.step, e.attempt) for e in events if e.kind == kind]

    expected = [(s, 1) for s in range(1, 11)] + [(s, 2) for s in range(11, 21)]
    assert kept(api.metrics(job.id, kind="step"), "step") == expected
    assert kept(api.metrics(job.id, kind="sample"), "sample") == [(5, 1), (10, 1), (15, 2), (20, 2)]
    history = api.metrics(job.id)
    assert kept(history, "rewind") == [(10, 2)]

    # A reader that connects now gets the history as /metrics gives it.
    late = list(api.events(job.id))
    assert [e.id for e in late] == [e.id for e in history]

    # The live reader drew steps 11-15 of attempt 1, then got the rewind and dropped them.
    at = next(i for i, e in enumerate(live) if e.kind == "rewind")
    assert (live[at].step, live[at].attempt) == (10, 2)
    assert [s for s, a in kept(live[:at], "step") if s > 10] == [11, 12, 13, 14, 15]
    drawn = [p for p in kept(live[:at], "step") if p[0] <= live[at].step] + kept(live[at:], "step")
    assert drawn == expected
