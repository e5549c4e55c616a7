"""Celery configuration, from Settings, in one place: the API sends with it, workers run with it."""

from __future__ import annotations

import base64
import json
import uuid

from celery import Celery
from kombu.serialization import dumps as kombu_dumps
from redis import Redis

from shared.config import Settings

TRAIN_TASK = "trainyard.train_job"
# Samples and predictions (services/api/inference.py -> workers/inference/), on a queue of
# their own that only the inference worker consumes: never behind a training job.
INFER_TASK = "trainyard.infer"


def inference_queue(default_queue: str) -> str:
    """The inference worker's queue: "{QUEUE}-inference"."""
    return f"{default_queue}-inference"


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured for long, exactly-once-ish training tasks (docs/design.md)."""
    app = Celery("trainyard", broker=settings.REDIS_URL)
    app.conf.update(
        # Ack after the task returns, so a worker that dies mid-job leaves the message to be
        # redelivered; prefetch 1 so a busy worker does not sit on jobs another could run.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # job state lives in the registry, not Celery's backend
        task_default_queue=settings.QUEUE,
        # Redis redelivers an unacked message after the visibility timeout: keep it above the
        # longest job so a healthy long job is never handed to a second worker.
        broker_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
        # SIGTERM is a warm shutdown: running jobs are told to checkpoint and requeue (see
        # workers/trainer/celery_app.py). If a deployment remaps SIGTERM to a cold shutdown
        # (REMAP_SIGTERM=SIGQUIT), Celery's soft shutdown still gives them the same window.
        worker_soft_shutdown_timeout=settings.SHUTDOWN_GRACE_S,
        worker_hijack_root_logger=False,
    )
    return app


def _transport_options(settings: Settings) -> dict[str, float]:
    visibility = settings.visibility_timeout_s
    options: dict[str, float] = {
        "visibility_timeout": visibility,
        "socket_timeout": 30,  # a publish to a vanished broker fails instead of hanging
    }
    if settings.VISIBILITY_TIMEOUT_S is not None:
        # A short override (tests) also needs kombu to sweep for expired messages often; its
        # default sweep is every ~100 s.
        options["unacked_restore_interval"] = max(1.0, visibility / 3)
        options["unacked_restore_throttle"] = 1
    return options


def enqueue_training(app: Celery, job_id: str, queue: str) -> None:
    """Put one training job on the queue."""
    app.send_task(TRAIN_TASK, args=[job_id], queue=queue)


def training_message(app: Celery, job_id: str, queue: str) -> str:
    """The broker message `enqueue_training` would LPUSH onto `queue`, for the API to push in
    the same Redis script that creates the job: created and enqueued atomically, in one round
    trip (kombu's publish is synchronous and cost more CPU than the rest of a submit).

    Celery builds the task message (its protocol 2 headers and body); only the envelope is
    kombu's Redis transport's, as `Channel.basic_publish` writes it for a priority-0 message
    (tests/integration/test_queue_message.py compares it with a real send_task's)."""
    task_id = str(uuid.uuid4())
    task = app.amqp.create_task_message(
        task_id, TRAIN_TASK, [job_id], {}, reply_to=app.thread_oid, ignore_result=None
    )
    content_type, encoding, body = kombu_dumps(task.body, serializer="json")
    envelope = {
        "body": base64.b64encode(body.encode() if isinstance(body, str) else body).decode(),
        "content-encoding": encoding,
        "content-type": content_type,
        "headers": task.headers,
        "properties": {
            **task.properties,
            "delivery_mode": 2,  # persistent, as Celery sends
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope)


def _job_id_of(raw: bytes | str) -> str | None:
    """The job id in one Celery message as kombu's Redis transport stores it."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # the `unacked` hash holds [message, exchange, key]
            message = message[0]
        if message.get("headers", {}).get("task") != TRAIN_TASK:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


# kombu's Redis transport keeps a queue's waiting messages in a list named after the queue,
# and messages delivered but not yet acknowledged in this hash.
UNACKED = "unacked"


class BrokerQueues:
    """Reads the broker's queues (kombu's layout in Redis): the one owner of that data."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    def depth(self, queue: str) -> int:
        """Messages waiting in `queue` (not counting those delivered and not yet acknowledged)."""
        return int(self._redis.llen(queue))

    def job_ids(self, queue: str) -> set[str]:
        """Job ids with a message waiting in `queue` or delivered and not yet acknowledged."""
        raws = list(self._redis.lrange(queue, 0, -1)) + list(self._redis.hvals(UNACKED))
        return {job_id for raw in raws if (job_id := _job_id_of(raw)) is not None}
