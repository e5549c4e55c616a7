"""The API pushes each job's Celery message itself, in the Redis script that creates the job
(shared.broker.training_message). These tests hold that message to what Celery's own
send_task writes, on a real Redis, so a Celery or kombu upgrade that changes the format fails
here rather than in a worker; every integration test that runs a job proves a real worker
takes it."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from redis import Redis

from devstack.stack import Stack
from shared.broker import _job_id_of, enqueue_training, make_celery, training_message
from shared.schemas import ClassifierSpec
from shared.state.jobs import JobRegistry
from shared.state.records import QueueFull

PER_MESSAGE = {"id", "root_id", "correlation_id", "delivery_tag"}  # fresh uuids each time


def _shape(message: dict[str, object]) -> dict[str, object]:
    """The message with its per-message ids blanked, and its body decoded."""
    out: dict[str, object] = {}
    for key, value in message.items():
        if isinstance(value, dict):
            out[key] = _shape(value)
        elif key in PER_MESSAGE:
            out[key] = "<uuid>" if value else value
        elif key == "body":
            out[key] = json.loads(base64.b64decode(str(value)))
        else:
            out[key] = value
    return out


def test_training_message_is_what_celery_send_task_writes(stack: Stack, redis: Redis) -> None:
    celery = make_celery(stack.config.settings())
    queue = f"test-queue-{uuid.uuid4().hex[:8]}"
    enqueue_training(celery, "job-1", queue)
    sent = json.loads(redis.lpop(queue))  # type: ignore[arg-type]
    ours = json.loads(training_message(celery, "job-1", queue))

    assert _shape(ours) == _shape(sent)
    assert ours["headers"]["id"] == ours["properties"]["correlation_id"]
    assert ours["properties"]["delivery_tag"] != sent["properties"]["delivery_tag"]


def test_create_pushes_the_message_in_the_same_step(stack: Stack, redis: Redis) -> None:
    reg = JobRegistry(redis, prefix=f"test-{uuid.uuid4().hex[:8]}")
    celery = make_celery(stack.config.settings())
    queue = f"test-queue-{uuid.uuid4().hex[:8]}"
    job = reg.create(
        ClassifierSpec(),
        "ann",
        "job-a",
        1,
        message=(queue, training_message(celery, "job-a", queue)),
    )
    # The queue holds this job's message and nothing else (BrokerQueues.job_ids would also count
    # `unacked`, shared by every queue: a job of an earlier test may still be in a worker).
    assert [_job_id_of(m) for m in redis.lrange(queue, 0, -1)] == [job.id]

    with pytest.raises(QueueFull):  # refused: no record, and no message either
        reg.create(
            ClassifierSpec(),
            "ann",
            "job-b",
            1,
            message=(queue, training_message(celery, "job-b", queue)),
        )
    assert redis.llen(queue) == 1
    assert not redis.exists(reg.keys.job("job-b"))
