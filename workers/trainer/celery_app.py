"""The worker's Celery app: `celery -A workers.trainer.celery_app worker -Q trainyard`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import bootsteps
from celery.signals import setup_logging, worker_ready, worker_shutting_down

from shared.config import connect_redis, get_settings
from shared.jobs import RedisKeys
from shared.logs import setup_json_logging
from shared.queue import make_celery
from shared.workers import WorkerRegistry

log = logging.getLogger(__name__)
settings = get_settings()
app = make_celery(settings)
app.conf.include = ["workers.trainer.tasks"]
keys = RedisKeys(settings.KEY_PREFIX)


@setup_logging.connect
def _json_logs(**_: Any) -> None:
    setup_json_logging()  # one JSON object per line, with the job id


@worker_ready.connect
def _clear_drain(sender: Any = None, **_: Any) -> None:
    # A restarted worker reuses its name: forget the previous process's drain.
    connect_redis(settings).delete(keys.worker_draining(str(sender.hostname)))


@worker_shutting_down.connect
def _drain(sender: Any = None, **_: Any) -> None:
    """SIGTERM (Kubernetes drain, scale-in): tell this worker's running job to checkpoint at
    its next step and hand itself back to the queue, well within the grace period."""
    worker = str(sender)
    redis = connect_redis(settings)
    redis.set(keys.worker_draining(worker), "1", ex=int(settings.SHUTDOWN_GRACE_S) + 60)
    redis.publish(keys.worker_control(worker), "drain")
    log.info("worker %s draining: running jobs will checkpoint and requeue", worker)


class HeartbeatFile(bootsteps.StartStopStep):
    """Touches TRAINYARD_WORKER_HEARTBEAT_FILE from the worker's event loop every 5 s; the
    Kubernetes liveness probe checks its age (a hung loop stops touching it)."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.path = Path(settings.WORKER_HEARTBEAT_FILE)
        self.tref: Any = None
        self.name = ""
        self.registry: WorkerRegistry | None = None

    def start(self, worker: Any) -> None:
        self.name = str(worker.hostname)
        self.registry = WorkerRegistry(connect_redis(settings), settings.KEY_PREFIX)
        self.touch()
        self.tref = worker.timer.call_repeatedly(5.0, self.touch)

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
        if self.registry is not None:
            self.registry.forget(self.name)

    def touch(self) -> None:
        """Also the worker's heartbeat in Redis: what "why is my job pending" counts."""
        try:
            self.path.touch()
            if self.registry is not None:
                self.registry.heartbeat(self.name)
        except Exception:
            log.exception("worker heartbeat failed (%s)", self.path)


app.steps["worker"].add(HeartbeatFile)
