"""Every model in the zoo trains end to end through the API on CPU, with tiny settings."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from minio import Minio
from PIL import Image

from devstack.stack import Stack
from shared.schemas import MemoryReport
from shared.status import JobStatus
from shared.storage import JobKeys
from trainyard.client import Client

TINY: dict[str, dict[str, Any]] = {
    "book_cnn": {"task": "classifier", "model": "book_cnn", "max_steps": 20},
    "book_cnn-book": {"task": "classifier", "model": "book_cnn", "mode": "book", "max_steps": 30},
    "book_mlp": {"task": "classifier", "model": "book_mlp", "max_steps": 20},
    "conv_gan": {"task": "gan", "model": "conv_gan", "max_steps": 3, "batch_size": 16},
    "conv_gan-book": {"task": "gan", "model": "conv_gan", "mode": "book", "max_steps": 3},
    "conv_gan-32-rgb": {
        "task": "gan",
        "model": "conv_gan",
        "max_steps": 2,
        "batch_size": 8,
        "resize": 32,
    },
    "conv_cgan": {"task": "cgan", "model": "conv_cgan", "max_steps": 3, "batch_size": 16},
    "book_cgan": {"task": "cgan", "model": "book_cgan", "mode": "book", "max_steps": 30},
    "book_conv_gan": {
        "task": "gan",
        "model": "book_conv_gan",
        "mode": "book",
        "resize": 128,
        "max_steps": 1,
    },
    "book_conv_gan-gelu": {
        "task": "gan",
        "model": "book_conv_gan",
        "resize": 128,
        "activation": "gelu",
        "max_steps": 1,
        "batch_size": 2,
    },
    "book_mlp_gan": {
        "task": "gan",
        "model": "book_mlp_gan",
        "mode": "book",
        "resize": [218, 178],
        "max_steps": 2,
    },
}


@pytest.fixture(scope="module")
def jobs(client: Client) -> dict[str, str]:
    """Submit every tiny job at once; the worker takes them in turn."""
    ids = {name: client.submit(body).id for name, body in TINY.items()}
    for job_id in ids.values():
        client.wait(job_id, timeout=600, poll=0.5)
    return ids


def _png(minio_client: Minio, bucket: str, key: str) -> Image.Image:
    return Image.open(io.BytesIO(minio_client.get_object(bucket, key).read()))


@pytest.mark.parametrize("name", list(TINY))
def test_model_trains_through_the_api(
    name: str, jobs: dict[str, str], client: Client, minio_client: Minio, stack: Stack
) -> None:
    job = client.get(jobs[name])
    assert job.status is JobStatus.SUCCEEDED, job.error
    spec, keys = TINY[name], JobKeys(job.id)
    steps = spec["max_steps"]
    assert job.step == steps and job.result is not None
    names = {
        o.object_name
        for o in minio_client.list_objects(stack.config.bucket, prefix=keys.prefix, recursive=True)
    }
    assert {keys.sample(steps), keys.final_model, keys.summary, keys.memory, keys.manifest} <= names
    memory = MemoryReport.model_validate_json(
        minio_client.get_object(stack.config.bucket, keys.memory).read()
    )
    assert memory.peak_step_tensor_bytes and memory.peak_step_tensor_bytes > 0
    metrics = job.result["metrics"]
    grid = _png(minio_client, stack.config.bucket, keys.sample(steps))
    if spec["task"] == "classifier":
        assert {keys.report("confusion.json"), keys.report("confusion.png")} <= names
        assert 0 <= metrics["test_accuracy"] <= 1
    else:
        assert {"test_d_real", "test_d_fake"} <= set(metrics)
        step_events = client.metrics(job.id, kind="step")
        assert {"d_loss", "g_loss", "d_real", "d_fake"} <= set(step_events[-1].metrics)
        side = {"book_conv_gan": 128, "book_mlp_gan": 218}.get(
            spec["model"], spec.get("resize", 28)
        )
        rows = 10 if spec["task"] == "cgan" else 8
        assert grid.size[1] == rows * (side + 2) + 2  # one row per label for cGANs


def test_confusion_matrix_counts_the_test_split(
    jobs: dict[str, str], minio_client: Minio, stack: Stack
) -> None:
    import json

    keys = JobKeys(jobs["book_cnn"])
    table = json.loads(
        minio_client.get_object(stack.config.bucket, keys.report("confusion.json")).read()
    )
    matrix = table["matrix"]
    assert len(matrix) == 10 and all(sum(row) == 100 for row in matrix)  # 100 per class
    assert table["classes"] == [str(i) for i in range(10)]


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"task": "gan", "model": "book_conv_gan"}, "resize", "set resize: 128"),
        ({"task": "gan", "model": "book_mlp_gan", "resize": 64}, "resize", "3x218x178"),
        ({"task": "classifier", "dataset": "ds-0000000000000000"}, "dataset", "upload it first"),
    ],
)
def test_model_that_does_not_fit_its_data_is_422(
    http: httpx.Client, body: dict[str, Any], field: str, says: str
) -> None:
    response = http.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and says in error["message"]
