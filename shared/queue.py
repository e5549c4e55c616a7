"""Celery configuration, from Settings, in one place: the API sends with it, workers run with it."""

from __future__ import annotations

from celery import Celery

from shared.config import Settings

TRAIN_TASK = "trainyard.train_job"


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured for long, exactly-once-ish training tasks (DESIGN.md)."""
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
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


def enqueue_training(app: Celery, job_id: str, queue: str) -> None:
    """Put one training job on the queue."""
    app.send_task(TRAIN_TASK, args=[job_id], queue=queue)
