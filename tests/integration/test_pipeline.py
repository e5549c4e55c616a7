"""The whole pipeline: REST -> Redis -> Celery worker -> fit() -> S3 + Redis Streams."""

from __future__ import annotations

import io
import time

import httpx
import pytest
import torch
from minio import Minio

from devstack.stack import Stack
from shared.schemas import ClassifierSpec, JobSummary, MemoryReport
from shared.status import JobStatus
from shared.storage import JobKeys
from tests.conftest import wait_for
from trainyard.client import ApiError, Client
from workers.trainer.data import load_dataset
from workers.trainer.models import build_model

SPEC = ClassifierSpec(
    epochs=2, batch_size=64, checkpoint_every=50, sample_every=50
)  # 63 steps/epoch


@pytest.fixture(scope="module")
def finished(client: Client) -> str:
    job = client.submit(SPEC)
    assert job.status is JobStatus.QUEUED
    done = client.wait(job.id, timeout=300, poll=0.2)
    assert done.status is JobStatus.SUCCEEDED, done.error
    return job.id


def test_job_succeeds_with_a_result(client: Client, finished: str) -> None:
    job = client.get(finished)
    assert job.attempts == 1 and job.step == job.total_steps == 126
    assert (
        job.started_at and job.finished_at and job.created_at <= job.started_at <= job.finished_at
    )
    assert job.result is not None
    assert 0.85 < job.result["metrics"]["test_accuracy"] <= 1.0


def test_artifacts_land_in_s3(minio_client: Minio, stack: Stack, finished: str) -> None:
    keys = JobKeys(finished)
    names = {
        o.object_name
        for o in minio_client.list_objects(stack.config.bucket, prefix=keys.prefix, recursive=True)
    }
    assert {
        keys.checkpoint(50),
        keys.checkpoint(100),
        keys.checkpoint(126),
        keys.manifest,
        keys.sample(50),
        keys.sample(126),
        keys.final_model,
        keys.summary,
        keys.memory,
    } <= names


def test_final_model_reproduces_the_reported_accuracy(
    minio_client: Minio, stack: Stack, client: Client, finished: str
) -> None:
    raw = minio_client.get_object(stack.config.bucket, JobKeys(finished).final_model).read()
    saved = torch.load(io.BytesIO(raw), weights_only=True)
    model = build_model(saved["model_name"])
    model.load_state_dict(saved["state_dict"])
    data = load_dataset("mnist-5k")
    with torch.no_grad():
        correct = (model.eval()(data.test_x / 255).argmax(1) == data.test_y).sum().item()
    reported = client.get(finished).result
    assert reported is not None
    assert correct / 1000 == pytest.approx(reported["metrics"]["test_accuracy"], abs=1e-9)


def test_summary_and_memory_report(minio_client: Minio, stack: Stack, finished: str) -> None:
    keys = JobKeys(finished)
    summary = JobSummary.model_validate_json(
        minio_client.get_object(stack.config.bucket, keys.summary).read()
    )
    memory = MemoryReport.model_validate_json(
        minio_client.get_object(stack.config.bucket, keys.memory).read()
    )
    assert summary.steps == 126 and summary.images_per_s > 0
    if memory.device == "cpu":
        assert memory.peak_host_rss_bytes and memory.peak_gpu_allocated_bytes is None
        assert "not GPU" in memory.note
    else:
        assert memory.peak_gpu_allocated_bytes and memory.peak_gpu_reserved_bytes


def test_metrics_stream_has_every_epoch(client: Client, finished: str) -> None:
    events = client.metrics(finished)
    epochs = [e for e in events if e.kind == "epoch"]
    assert [e.epoch for e in epochs] == [0, 1]
    assert all(0 <= e.metrics["test_accuracy"] <= 1 for e in epochs)
    steps = [e for e in events if e.kind == "step"]
    assert {e.epoch for e in steps} == {0, 1}
    assert [e.step for e in steps] == sorted(e.step for e in steps)
    assert all({"loss", "images_per_s"} <= set(e.metrics) for e in steps)
    statuses = [e.info["status"] for e in events if e.kind == "status"]
    assert statuses == ["queued", "running", "succeeded"]  # submitted: its first event
    assert client.metrics(finished, kind="epoch") == epochs
    # `after` resumes from a stream id without repeats
    assert client.metrics(finished, after=events[4].id) == events[5:]


def test_presigned_urls_download(client: Client, finished: str) -> None:
    artifacts = client.artifacts(finished)
    assert len(artifacts) >= 9
    for artifact in artifacts:
        response = httpx.get(artifact.url, timeout=30)
        assert response.status_code == 200 and len(response.content) == artifact.size
        assert "X-Amz-Expires=900" in artifact.url


def test_list_is_newest_first_and_paginated(client: Client) -> None:
    ids = [client.submit(SPEC.model_copy(update={"max_steps": 1})).id for _ in range(3)]
    page = client.list_jobs(limit=2)
    assert [j.id for j in page.data] == ids[::-1][:2] and page.next_cursor
    assert client.list_jobs(limit=1, cursor=page.next_cursor).data[0].id == ids[0]
    for job_id in ids:
        client.wait(job_id, timeout=120)


def test_cancel_running_job_stops_within_a_few_steps(client: Client) -> None:
    spec = ClassifierSpec(
        batch_size=1, epochs=3, log_every=1, checkpoint_every=100_000, sample_every=100_000
    )
    job = client.submit(spec)
    wait_for(lambda: client.get(job.id).step >= 50, 120, "the job to train 50 steps")
    asked_at = time.time()
    assert client.cancel(job.id).cancel_requested
    done = client.wait(job.id, timeout=60, poll=0.1)
    assert done.status is JobStatus.CANCELLED
    before = [e.step for e in client.metrics(job.id, kind="step") if e.time <= asked_at]
    steps_after_request = done.step - max(before)
    print(f"stopped {steps_after_request} steps after the cancel request")
    assert 0 <= steps_after_request <= 25
    assert done.step < 12_000
    with pytest.raises(ApiError) as info:  # a finished job cannot be cancelled again
        client.cancel(job.id)
    assert info.value.status_code == 409


def test_cancel_queued_job_never_runs(client: Client, stack: Stack) -> None:
    blocker = client.submit(ClassifierSpec(batch_size=1, epochs=1, log_every=1))
    wait_for(lambda: client.get(blocker.id).status is JobStatus.RUNNING, 60, "blocker running")
    queued = client.submit(SPEC)
    assert client.cancel(queued.id).status is JobStatus.CANCELLED
    client.cancel(blocker.id)
    client.wait(blocker.id, timeout=60)
    wait_for(lambda: stack.redis_client().llen("trainyard") == 0, 30, "the queue to drain")
    after = client.get(queued.id)
    assert after.status is JobStatus.CANCELLED and after.attempts == 0 and after.started_at is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task": "classifier", "epochs": 0}, "epochs"),
        ({"task": "classifier", "batch_size": "big"}, "batch_size"),
        ({"task": "classifier", "model": "resnet"}, "model"),
        ({"task": "classifier", "learning_rate": 1}, "learning_rate"),
        ({"task": "nope"}, "task"),
    ],
)
def test_bad_spec_is_422_naming_the_field(
    http: httpx.Client, body: dict[str, object], field: str
) -> None:
    response = http.post("/v1/jobs", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error" and field in (error["field"] or error["message"])


UNKNOWN = "deadbeefdeadbeef"  # a well-formed job id (16 hex digits) that no job has


@pytest.mark.parametrize(
    "path", [f"/v1/jobs/{UNKNOWN}", f"/v1/jobs/{UNKNOWN}/metrics", f"/v1/jobs/{UNKNOWN}/artifacts"]
)
def test_unknown_id_is_404(http: httpx.Client, path: str) -> None:
    response = http.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert UNKNOWN in response.json()["error"]["message"]
    assert http.post(f"/v1/jobs/{UNKNOWN}/cancel").status_code == 404


def test_health_and_openapi(stack: Stack, client: Client) -> None:
    url = stack.config.api_url
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    ready = client.ready()
    assert ready.ready and ready.checks == {"redis": "ok", "s3": "ok"}
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    assert {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/metrics",
        "/v1/jobs/{job_id}/artifacts",
    } <= set(paths)
