"""Celery tasks: thin wiring around JobRunner, which wraps fit()."""

from __future__ import annotations

import signal
from functools import lru_cache
from types import FrameType

from celery import Task

from shared.config import get_settings
from shared.queue import TRAIN_TASK, enqueue_training
from workers.trainer.celery_app import app
from workers.trainer.runner import JobRunner


@lru_cache(maxsize=1)
def _runner(worker: str) -> JobRunner:
    settings = get_settings()  # connections made once per worker process
    return JobRunner(settings, worker, lambda job_id: enqueue_training(app, job_id, settings.QUEUE))


@app.task(name=TRAIN_TASK, bind=True)
def train_job(self: Task, job_id: str) -> str:
    """Train one job; its outcome is on the job record, not in Celery's result backend."""
    runner = _runner(self.request.hostname or "worker")

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        runner.drain()  # checkpoint at the next step and hand the job back

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return runner.run(job_id).value
    finally:
        signal.signal(signal.SIGTERM, previous)
