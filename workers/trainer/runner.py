"""Run one queued job on this worker: the Redis and S3 side of training, around fit()."""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

from redis import Redis

from shared.config import Settings
from shared.events import EventStream
from shared.jobs import JobRegistry, utcnow
from shared.schemas import JobEvent, JobSummary
from shared.status import IllegalTransition, JobStatus
from shared.storage import S3ArtifactStore
from workers.trainer.loop import fit
from workers.trainer.run import JobCancelled, Run

log = logging.getLogger(__name__)


class CancelListener:
    """Sets `flag` as soon as the job's cancel is requested (pub/sub, with the hash as backstop)."""

    def __init__(self, registry: JobRegistry, job_id: str, flag: threading.Event) -> None:
        self.registry, self.job_id, self.flag = registry, job_id, flag
        self._done = threading.Event()
        self._pubsub = registry.redis.pubsub(ignore_subscribe_messages=True)
        self._thread = threading.Thread(target=self._listen, name=f"cancel-{job_id}", daemon=True)

    def __enter__(self) -> CancelListener:
        self._pubsub.subscribe(self.registry.keys.control(self.job_id))
        self._thread.start()
        return self

    def _listen(self) -> None:
        # Subscribed before the first check, so a cancel sent in between is not missed.
        while not self._done.is_set():
            if self.registry.cancel_requested(self.job_id):
                self.flag.set()
                return
            self._pubsub.get_message(timeout=0.2)

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._done.set()
        self._thread.join(timeout=5)
        self._pubsub.close()


class JobRunner:
    """Moves a job through running to a terminal state, with fit() doing the training."""

    def __init__(self, settings: Settings, worker: str) -> None:
        redis = Redis.from_url(settings.REDIS_URL)
        self.registry = JobRegistry(redis, settings.KEY_PREFIX)
        self.events = EventStream(redis, settings.KEY_PREFIX)
        self.store = S3ArtifactStore.from_settings(settings)
        self.worker = worker
        self.data_dir = settings.DATA_DIR

    def run(self, job_id: str) -> JobStatus:
        job = self.registry.get(job_id)
        try:
            self.registry.transition(
                job_id,
                JobStatus.RUNNING,
                started_at=utcnow(),
                worker=self.worker,
                attempts=job.attempts + 1,
            )
        except IllegalTransition as exc:
            log.info("job %s not started: %s", job_id, exc)  # cancelled while queued, or done
            return exc.current
        self._status_event(job_id, JobStatus.RUNNING)
        run = Run(job_id, self.store, lambda events: self._publish(job_id, events), self.data_dir)
        with CancelListener(self.registry, job_id, run.stop_requested):
            try:
                summary = fit(job.spec, run)
            except JobCancelled as exc:
                return self._finish(job_id, JobStatus.CANCELLED, step=exc.step)
            except Exception as exc:
                log.exception("job %s failed", job_id)
                return self._finish(job_id, JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
        return self._finish(job_id, JobStatus.SUCCEEDED, summary)

    def _publish(self, job_id: str, events: list[JobEvent]) -> None:
        self.events.publish(job_id, events)
        progress: dict[str, object] = {"step": events[-1].step, "epoch": events[-1].epoch}
        for event in events:
            if "total_steps" in event.info:
                progress["total_steps"] = event.info["total_steps"]
        self.registry.update(job_id, **progress)

    def _finish(
        self,
        job_id: str,
        status: JobStatus,
        summary: JobSummary | None = None,
        error: str | None = None,
        step: int | None = None,
    ) -> JobStatus:
        fields: dict[str, object] = {}
        if summary is not None:
            fields["result"] = summary.model_dump(mode="json")
        if error is not None:
            fields["error"] = error
        if step is not None:
            fields["step"] = step
        self.registry.transition(job_id, status, **fields)
        self._status_event(job_id, status, error=error)
        return status

    def _status_event(self, job_id: str, status: JobStatus, error: str | None = None) -> None:
        info: dict[str, object] = {"status": status.value, "worker": self.worker}
        if error:
            info["error"] = error
        self.events.publish(job_id, [JobEvent(kind="status", time=time.time(), info=info)])
