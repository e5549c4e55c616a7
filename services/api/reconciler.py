"""The reconciler: a periodic pass that puts lost jobs back on the queue.

- a `running` job whose lease expired: its worker died (kill -9, OOM killer, node loss)
  without handing it back. It goes back to `queued` and gets a new message; the next worker
  resumes from its last checkpoint.
- a `queued` job with no message in the broker (a requeue lost in a crash between the status
  move and the send, or dropped as a duplicate while a dead worker's lease was still live):
  re-sent. A submission cannot lose it: the API creates the job and pushes its message in
  one Redis script.
- every running sweep is advanced (shared/sweeps.py), on a thread of its own (a slow sweep
  must not delay lease reclaims), every RECONCILE_INTERVAL_S: finished trials told to Optuna,
  new trials queued as room appears in the owner's queue (each sweep for at most
  PASS_BUDGET_S and `parallel` trials a pass), a finished sweep closed.
- a `queued` job still waiting for its memory probe (accepted while being planned): routed
  (or failed) if the probe is cached, for the process that should have done it died; run
  unplanned past PLAN_TIMEOUT_S (see ApiPlanner.reconcile).

Duplicate messages are harmless: a worker only trains a job whose lease it takes. Runs in the
API process; a Redis lock makes one replica do each pass."""

from __future__ import annotations

import logging
import threading

from celery import Celery

from services.api.planner import ApiPlanner
from shared.broker import BrokerQueues, enqueue_training
from shared.config import Settings
from shared.state.heartbeats import FORGET_AFTER_S
from shared.state.jobs import ActiveJob
from shared.state.records import status_event, utcnow
from shared.status import JobStatus
from shared.sweeps import SweepDriver

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(
        self,
        planner: ApiPlanner,
        broker: BrokerQueues,
        celery: Celery,
        settings: Settings,
        sweeps: SweepDriver | None = None,
    ) -> None:
        self.planner, self.broker, self.celery, self.settings = planner, broker, celery, settings
        self.sweeps = sweeps
        self.registry, self.workers = planner.registry, planner.workers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._sweep_thread = threading.Thread(
            target=self._sweep_loop, name="reconciler-sweeps", daemon=True
        )

    def pass_once(self) -> dict[str, list[str]]:
        """One pass; returns the job ids it reclaimed, re-sent and planned, and the workers it
        forgot (not seen for FORGET_AFTER_S)."""
        done: dict[str, list[str]] = {"reclaimed": [], "resent": [], "planned": [], "forgot": []}
        if not self.registry.try_lock_reconciler(self.settings.RECONCILE_INTERVAL_S):
            return done  # another replica is on it
        done["forgot"] = self.workers.prune(FORGET_AFTER_S)
        grace = self.settings.RECONCILE_GRACE_S
        waiting: list[ActiveJob] = []  # queued past the grace period: is its message there?
        for job in self.registry.active():
            queue = job.queue or self.settings.QUEUE
            age = (utcnow() - job.since).total_seconds()
            if job.status is JobStatus.RUNNING and self._reclaim(job):
                enqueue_training(self.celery, job.id, queue)
                done["reclaimed"].append(job.id)
            elif job.status is JobStatus.QUEUED and job.planning is not None:  # no message yet
                if age > grace and self.planner.reconcile(job.id, job.planning, age):
                    done["planned"].append(job.id)
            elif job.status is JobStatus.QUEUED and age > grace:
                waiting.append(job)
        # Scanning the broker reads every message: only when some job has waited that long.
        in_broker: set[str] = set()
        for queue in {job.queue or self.settings.QUEUE for job in waiting}:
            in_broker |= self.broker.job_ids(queue)
        for job in waiting:
            if job.id not in in_broker and self._resend(job):
                done["resent"].append(job.id)
        return done

    def _reclaim(self, job: ActiveJob) -> bool:
        """Requeue a running job whose worker stopped renewing its lease (lost); its event
        names the attempt that was lost."""
        reason = "reconciler: its worker stopped renewing the lease (lost)"
        if not self.registry.reclaim(job.id, status_event(job.attempts, reason=reason)):
            return False
        log.warning("reconciler: requeued job %s: %s", job.id, reason)
        return True

    def _resend(self, job: ActiveJob) -> bool:
        """Send a queued job's message again (its status does not change)."""
        reason = "reconciler: its queue message was lost"
        if not self.registry.mark_resent(job.id, status_event(job.attempts, reason=reason)):
            return False  # started or cancelled meanwhile
        log.warning("reconciler: re-sending job %s: %s", job.id, reason)
        enqueue_training(self.celery, job.id, job.queue or self.settings.QUEUE)
        return True

    def start(self) -> None:
        self._thread.start()
        if self.sweeps is not None:
            self._sweep_thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._sweep_thread.is_alive():
            self._sweep_thread.join(timeout=5)

    def _sweep_loop(self) -> None:
        """Advance every running sweep (each under its own lock, so replicas share them)."""
        assert self.sweeps is not None
        while not self._stop.wait(self.settings.RECONCILE_INTERVAL_S):
            try:
                self.sweeps.advance_all()
            except Exception:  # Redis restarting, say: try again next interval
                log.exception("reconciler sweep pass failed")

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.RECONCILE_INTERVAL_S):
            try:
                self.pass_once()
            except Exception:  # Redis restarting, say: try again next interval
                log.exception("reconciler pass failed")
