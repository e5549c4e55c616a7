"""Celery tasks: thin wiring around JobRunner, which wraps fit()."""

from __future__ import annotations

from functools import lru_cache

from celery import Task

from shared.config import get_settings
from shared.queue import TRAIN_TASK
from workers.trainer.celery_app import app
from workers.trainer.runner import JobRunner


@lru_cache(maxsize=1)
def _runner(worker: str) -> JobRunner:
    return JobRunner(get_settings(), worker)  # connections made once per worker process


@app.task(name=TRAIN_TASK, bind=True)
def train_job(self: Task, job_id: str) -> str:
    """Train one job; its outcome is on the job record, not in Celery's result backend."""
    return _runner(self.request.hostname or "worker").run(job_id).value
