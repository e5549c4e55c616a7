"""Celery tasks: thin wiring around JobRunner, which wraps fit()."""

from __future__ import annotations

import signal
from functools import lru_cache
from types import FrameType
from typing import Any

from celery import Task

from shared.config import connect_redis, get_settings
from shared.jobs import RedisKeys
from shared.planning import PLAN_TASK
from shared.queue import TRAIN_TASK, enqueue_training
from shared.schemas import JobSpecAdapter
from workers.trainer.celery_app import app
from workers.trainer.planner import probe
from workers.trainer.runner import JobRunner


@lru_cache(maxsize=1)
def _runner(worker: str) -> JobRunner:
    settings = get_settings()  # connections made once per worker process
    return JobRunner(settings, worker, lambda job_id, queue: enqueue_training(app, job_id, queue))


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


@app.task(name=PLAN_TASK)
def plan_memory(
    key: str, spec: dict[str, Any], image: list[int], num_classes: int, reply: str
) -> None:
    """Probe a model + data shape on the CPU (seconds), cache the result, answer the API."""
    settings = get_settings()
    redis, keys = connect_redis(settings), RedisKeys(settings.KEY_PREFIX)
    cached = redis.get(keys.plan_cache(key))
    if cached is None:
        c, h, w = image
        result = probe(JobSpecAdapter.validate_python(spec), (c, h, w), num_classes)
        cached = result.model_dump_json()
        redis.set(keys.plan_cache(key), cached)
    redis.rpush(reply, cached)
    redis.expire(reply, 120)
