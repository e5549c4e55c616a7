"""The worker's Celery app: `celery -A workers.trainer.celery_app worker -Q trainyard`."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import click
from celery import bootsteps
from celery.signals import (
    celeryd_after_setup,
    celeryd_init,
    setup_logging,
    worker_process_init,
    worker_ready,
    worker_shutting_down,
)
from celery.utils.nodenames import default_nodename

from shared.broker import make_celery
from shared.config import connect_redis, get_settings
from shared.logs import setup_json_logging
from shared.planning import parse_classes, queue_for
from shared.state.heartbeats import WorkerRegistry
from workers.trainer import cpu
from workers.trainer.identity import node_name

log = logging.getLogger(__name__)
settings = get_settings()
app = make_celery(settings)
app.conf.include = ["workers.trainer.tasks", "workers.inference.tasks"]


@setup_logging.connect
def _json_logs(**_: Any) -> None:
    setup_json_logging()  # one JSON object per line, with the job id


def gpu_memory() -> tuple[str | None, int | None, int | None]:
    """(name, total, free) of this machine's first GPU via nvidia-smi, without touching CUDA in
    this parent process (CUDA cannot be used again in the children it forks)."""
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,memory.total,memory.free",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.splitlines()[0]
        name, total, free = (part.strip() for part in out.split(","))
        return name, int(total) * 2**20, int(free) * 2**20
    except (OSError, IndexError, ValueError, subprocess.SubprocessError):
        return None, None, None


def memory_class(gpu_total: int | None) -> str:
    """TRAINYARD_WORKER_MEMORY_CLASS, else the largest GPU class this GPU holds, else cpu."""
    if settings.WORKER_MEMORY_CLASS:
        return settings.WORKER_MEMORY_CLASS
    gpu_classes = [c for c in parse_classes(settings.MEMORY_CLASSES) if c.gpu]
    fitting = [c for c in gpu_classes if gpu_total and c.bytes <= gpu_total]
    return fitting[-1].name if fitting else "cpu"


def _named_explicitly(hostname: str) -> bool:
    """Whether the worker was given `-n`: Celery's command line fills in `celery@<host>`."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and "hostname" in ctx.params:
        return ctx.get_parameter_source("hostname") != click.core.ParameterSource.DEFAULT
    return hostname != default_nodename(None)


@celeryd_init.connect
def _unique_name(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """Without `-n`, name this replica `worker@<host>-<container id or random>` (identity.py):
    replicas sharing a hostname (host networking, --scale) must not share a Celery node name
    or trainyard's heartbeat, busy and draining keys. Runs before Celery uses the name."""
    if not _named_explicitly(str(sender)):
        role = "worker" if settings.WORKER_ROLE == "trainer" else settings.WORKER_ROLE
        instance.hostname = node_name(role)


# This worker's thread sizing, decided in the parent before its pool processes fork.
threads: cpu.ThreadPlan | None = None


def _registry() -> WorkerRegistry:
    return WorkerRegistry(connect_redis(settings), settings.KEY_PREFIX)


@celeryd_after_setup.connect
def _size_threads(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """Share the CPU quota among the pool's processes (cpu.py). The parent only exports the
    thread environment; each prefork child sizes torch itself (_pool_process_threads), since
    torch's inter-op count can be set once per process. Other pools run tasks in here."""
    global threads
    concurrency = int(instance.concurrency or 1)
    threads = cpu.plan(cpu.cpu_quota(settings.WORKER_CPUS), concurrency)
    cpu.export_env(threads)
    if settings.WORKER_ROLE == "trainer":
        _registry().clear_threads(str(sender))
    log.info("worker %s: threads %s", sender, threads)
    pool = getattr(instance.pool_cls, "__module__", str(instance.pool_cls))
    if "prefork" not in pool:
        _report(str(sender), cpu.apply(threads))


@worker_process_init.connect
def _pool_process_threads(sender: Any = None, **_: Any) -> None:
    """In each prefork child, before any task: size torch, then report what it runs with."""
    if threads is not None:
        _report(str(sender), cpu.apply(threads))


def _report(worker: str, applied: cpu.ThreadPlan) -> None:
    """Trainers publish it for their heartbeat; planners are not listed as workers."""
    if settings.WORKER_ROLE != "trainer":
        return
    try:
        _registry().report_threads(worker, os.getpid(), applied.as_dict())
    except Exception:
        log.exception("worker %s: thread report failed", worker)


@celeryd_after_setup.connect
def _consume_class_queue(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """A trainer also consumes the queue of its memory class (the planner routes there)."""
    if settings.WORKER_ROLE != "trainer":
        return
    klass = memory_class(gpu_memory()[1])
    queue = queue_for(klass, settings.QUEUE)
    instance.app.amqp.queues.select_add(queue)
    log.info("worker %s: memory class %s, consuming %s", sender, klass, queue)


@worker_ready.connect
def _clear_drain(sender: Any = None, **_: Any) -> None:
    # A restarted worker reuses its name: forget the previous process's drain.
    _registry().clear_drain(str(sender.hostname))


@worker_shutting_down.connect
def _drain(sender: Any = None, **_: Any) -> None:
    """SIGTERM (Kubernetes drain, scale-in): tell this worker's running job to checkpoint at
    its next step and hand itself back to the queue, well within the grace period."""
    worker = str(sender)
    _registry().request_drain(worker, settings.SHUTDOWN_GRACE_S + 60)
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
        if settings.WORKER_ROLE == "trainer":  # planners take no jobs: not counted as workers
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
                gpu_name, total, free = gpu_memory()
                self.registry.heartbeat(
                    self.name,
                    {
                        "memory_class": memory_class(total),
                        "device": "cuda" if total else "cpu",
                        "gpu_name": gpu_name,
                        "gpu_total_bytes": total,
                        "gpu_free_bytes": free,
                        **self.registry.threads(self.name),
                    },
                )
        except Exception:
            log.exception("worker heartbeat failed (%s)", self.path)


app.steps["worker"].add(HeartbeatFile)
