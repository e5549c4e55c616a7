"""Celery tasks: thin wiring around JobExecutor, which wraps fit()."""

from __future__ import annotations

import logging
import signal
from functools import lru_cache
from types import FrameType
from typing import Any

from celery import Task

from shared.broker import TRAIN_TASK, enqueue_training
from shared.config import connect_redis, get_settings
from shared.planning import PLAN_TASK, Planner
from shared.schemas import JobSpecAdapter
from shared.state.heartbeats import WorkerRegistry
from shared.state.jobs import JobRegistry
from shared.state.plans import PlanCache
from workers.trainer.celery_app import app
from workers.trainer.job import JobExecutor
from workers.trainer.probe import probe

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _executor(worker: str) -> JobExecutor:
    settings = get_settings()  # connections made once per worker process
    return JobExecutor(settings, worker, lambda job_id, queue: enqueue_training(app, job_id, queue))


@app.task(name=TRAIN_TASK, bind=True)
def train_job(self: Task, job_id: str) -> str:
    """Train one job; its outcome is on the job record, not in Celery's result backend."""
    executor = _executor(self.request.hostname or "worker")

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        executor.drain()  # checkpoint at the next step and hand the job back

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return executor.run(job_id).value
    finally:
        signal.signal(signal.SIGTERM, previous)


@lru_cache(maxsize=1)
def _planner() -> Planner:
    settings = get_settings()  # connections made once per planner process
    redis, prefix = connect_redis(settings), settings.KEY_PREFIX
    registry, cache = (
        JobRegistry(redis, prefix),
        PlanCache(redis, prefix, settings.PLAN_CACHE_TTL_S),
    )
    return Planner(registry, cache, app, settings, WorkerRegistry(redis, prefix))


@app.task(name=PLAN_TASK)
def plan_memory(key: str, spec: dict[str, Any], image: list[int], num_classes: int) -> None:
    """Probe a model + data shape on the CPU (seconds; see shared.planning.PlanShape), cache
    it, then route or fail every job accepted while it was being planned. A probe that
    fails routes them unplanned: planning is advice, it never stops a job."""
    planner = _planner()
    planner.cache.mark_probing(key)  # started: submits may wait
    try:
        found = planner.cached(key)
        if found is None:
            c, h, w = image
            try:
                found = probe(JobSpecAdapter.validate_python(spec), (c, h, w), num_classes)
            except Exception as exc:
                log.exception("probe of plan key %s failed", key)
                planner.settle(key, None, f"memory not predicted: the probe failed ({exc})")
                return
            planner.store(key, found)
        planner.settle(key, found)
    finally:
        planner.cache.release(key)
