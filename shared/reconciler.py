"""The reconciler: a periodic pass that puts lost jobs back on the queue.

- a `running` job whose lease expired: its worker died (kill -9, OOM killer, node loss)
  without handing it back. It goes back to `queued` and gets a new message; the next worker
  resumes from its last checkpoint.
- a `queued` job with no message in the broker (a requeue lost in a crash between the status
  move and the send, or dropped as a duplicate while a dead worker's lease was still live):
  re-sent. A submission cannot lose it: the API creates the job and pushes its message in
  one Redis script.
- a `queued` job still waiting for its memory probe (accepted while being planned): routed
  (or failed) if the probe is cached, for the process that should have done it died; run
  unplanned past PLAN_TIMEOUT_S (see Planner.reconcile).

Duplicate messages are harmless: a worker only trains a job whose lease it takes. Runs in the
API process; a Redis lock makes one replica do each pass."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

from celery import Celery

from shared.broker import broker_job_ids, enqueue_training
from shared.config import Settings
from shared.events import EventStream
from shared.jobs import JobRegistry, _text, utcnow
from shared.planning import Planner
from shared.schemas import JobEvent
from shared.workers import FORGET_AFTER_S, WorkerRegistry

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(
        self, registry: JobRegistry, events: EventStream, celery: Celery, settings: Settings
    ) -> None:
        self.registry, self.events, self.celery, self.settings = registry, events, celery, settings
        self.workers = WorkerRegistry(registry.redis, settings.KEY_PREFIX)
        self.planner = Planner(registry.redis, celery, settings, self.workers)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)

    def pass_once(self) -> dict[str, list[str]]:
        """One pass; returns the job ids it reclaimed, re-sent and planned, and the workers it
        forgot (not seen for FORGET_AFTER_S)."""
        done: dict[str, list[str]] = {"reclaimed": [], "resent": [], "planned": [], "forgot": []}
        lock = self.registry.redis.set(
            self.registry.keys.reconciler_lock(),
            "1",
            nx=True,
            px=int(self.settings.RECONCILE_INTERVAL_S * 1000),
        )
        if not lock:
            return done  # another replica is on it
        done["forgot"] = self.workers.prune(FORGET_AFTER_S)
        grace = self.settings.RECONCILE_GRACE_S
        redis, keys = self.registry.redis, self.registry.keys
        ids = self.registry.active_ids()
        pipe = redis.pipeline(transaction=False)  # one round trip, five fields a job
        for job_id in ids:
            pipe.hmget(keys.job(job_id), "status", "queue", "enqueued_at", "created_at", "planning")
        waiting: dict[str, str] = {}  # queued past the grace period: is its message there?
        for job_id, (status, queue_, enqueued, created, planning) in zip(
            ids, pipe.execute(), strict=True
        ):
            if status is None:  # the record is gone
                redis.srem(keys.active(), keys.job(job_id))
                continue
            queue = _text(queue_) if queue_ else self.settings.QUEUE
            age = _age_s(_text(enqueued or created))
            if status == b"running" and self.registry.reclaim(job_id):
                self._resend(job_id, queue, "its worker stopped renewing the lease (lost)")
                done["reclaimed"].append(job_id)
            elif status == b"queued" and planning is not None:  # no message until planned
                if age > grace and self.planner.reconcile(job_id, _text(planning), age):
                    done["planned"].append(job_id)
            elif status == b"queued" and age > grace:
                waiting[job_id] = queue
        # Scanning the broker reads every message: only when some job has waited that long.
        in_broker: set[str] = set()
        for queue in set(waiting.values()):
            in_broker |= broker_job_ids(redis, queue)
        for job_id, queue in waiting.items():
            if job_id not in in_broker:
                self.registry.update(job_id, enqueued_at=utcnow())
                self._resend(job_id, queue, "its queue message was lost")
                done["resent"].append(job_id)
        return done

    def _resend(self, job_id: str, queue: str, reason: str) -> None:
        log.warning("reconciler: requeueing job %s: %s", job_id, reason)
        enqueue_training(self.celery, job_id, queue)
        attempt = int(self.registry.field(job_id, "attempts") or 0)  # the one that was lost
        self.events.publish(
            job_id,
            [
                JobEvent(
                    kind="status",
                    time=time.time(),
                    attempt=attempt,
                    info={"status": "queued", "reason": f"reconciler: {reason}"},
                )
            ],
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.RECONCILE_INTERVAL_S):
            try:
                self.pass_once()
            except Exception:  # Redis restarting, say: try again next interval
                log.exception("reconciler pass failed")


def _age_s(iso: str) -> float:
    return (utcnow() - datetime.fromisoformat(iso)).total_seconds()
