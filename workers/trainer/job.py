"""Run one job on this worker: take its lease, call fit(), and end the job in the right state.

Every write is fenced by the lease (shared/state/leases.py); a LeaseKeeper thread renews the
lease and turns cancel requests, worker drains and a lost lease into the run's stop reason."""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import psutil
import torch

from shared import planning
from shared.catalog import DatasetCatalog
from shared.config import Settings, connect_redis
from shared.logs import current_job
from shared.packing import pack_key
from shared.planning import GIB
from shared.schemas import JobEvent, JobSpec, JobSummary
from shared.state.events import EventStream
from shared.state.heartbeats import WorkerRegistry
from shared.state.jobs import JobRegistry
from shared.state.leases import Lease, LeaseLost
from shared.state.plans import PlanCache
from shared.state.records import JobNotFound, JobRecord, encode, status_event, utcnow
from shared.state.sweeps import SweepRegistry
from shared.status import IllegalTransition, JobStatus
from shared.storage import S3ArtifactStore
from shared.sweeps import TrialReporter
from workers.trainer.faults import FaultPlan, load_plan
from workers.trainer.fit import fit
from workers.trainer.monitor import Diverged
from workers.trainer.pack import fit_pack
from workers.trainer.probe import probe
from workers.trainer.run import JobStopped, Run, StopReason

log = logging.getLogger(__name__)


class LeasedRun(Run):
    """A Run whose writes are fenced by the job's lease."""

    def __init__(
        self, executor: JobExecutor, lease: Lease, job: JobRecord, faults: FaultPlan | None
    ) -> None:
        super().__init__(lease.job_id, executor.store, self._publish, executor.settings.DATA_DIR)
        self.executor, self.lease, self.faults = executor, lease, faults
        self.attempt = lease.attempt
        self.warnings = list(job.warnings)  # an earlier attempt's are kept, not raised again
        self.record = job

    def _publish(self, events: list[JobEvent]) -> None:
        progress = {"step": str(events[-1].step), "epoch": str(events[-1].epoch)}
        for event in events:
            if "total_steps" in event.info:
                progress["total_steps"] = str(event.info["total_steps"])
            if event.kind == "warning":  # the record's list, in the same fenced write
                progress["warnings"] = encode([w.model_dump() for w in self.warnings])
        self.executor.events.publish_fenced(self.lease, events, progress)

    def after_step(self, step: int, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.faults is not None and step == self.faults.nan_at_step:
            return {name: loss * float("nan") for name, loss in losses.items()}
        return losses

    def before_commit(self, step: int) -> None:
        # A worker that lost its lease must not move latest.json: check just before writing.
        self.executor.registry.leases.check(self.lease)

    def after_commit(self, step: int) -> None:
        # The record names a checkpoint only once it is committed: what a successor resumes from.
        self.executor.registry.update(self.job_id, self.lease, checkpoint_step=step)

    def should_stop(self, step: int) -> bool:
        if self.faults is not None:
            if step == self.faults.exit_at_step:
                # The injected kill -9 comes once this step's events and the checkpoint in
                # flight are written: the worst case, a stream that holds steps past the
                # checkpoint a successor resumes from.
                self.drain()
            self.faults.trigger(step)
        return super().should_stop(step)

    def request_stop(self, reason: StopReason) -> None:
        # A lost lease overrides everything; otherwise the first reason wins (cancel stays cancel).
        if reason == "lease_lost" or self.stop_reason is None:
            self.stop_reason = reason

    def evaluated(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        """A sweep's trial: report the epoch's metric to the sweep's pruner (shared/sweeps.py);
        if it says prune, stop before the next step and end `pruned` with its reason."""
        job = self.record
        if job.sweep_id is None or job.trial is None or self.stop_reason is not None:
            return
        try:
            reason = self.executor.trials.evaluated(job, step, epoch, metrics)
        except Exception:  # pruning is advice: never let it stop training
            log.exception("job %s: could not report to its sweep", self.job_id)
            return
        if reason is not None:
            log.info("job %s: %s", self.job_id, reason)
            self.request_stop("pruned")
            if self.stop_reason == "pruned":
                self.stop_detail = reason


class LeaseKeeper:
    """A thread beside the training loop: renews the lease every TTL/3 and listens for the
    job's cancel and the worker's drain (pub/sub, with the Redis record as a backstop). In a
    pack each trial has its own keeper; only the first (`marks_busy`) names the worker's job."""

    def __init__(self, executor: JobExecutor, run: LeasedRun, marks_busy: bool = True) -> None:
        self.executor, self.run, self.marks_busy = executor, run, marks_busy
        self.signals = executor.registry.signals(run.job_id, executor.worker)
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"control-{run.job_id}", daemon=True
        )

    def __enter__(self) -> LeaseKeeper:
        self.signals.subscribe()
        self._busy(self.run.job_id)
        self._thread.start()
        return self

    def _busy(self, job_id: str | None) -> None:
        if not self.marks_busy:
            return
        self.executor.workers.set_busy(
            self.executor.worker, job_id, self.executor.settings.LEASE_TTL_S
        )

    def _loop(self) -> None:
        registry, workers = self.executor.registry, self.executor.workers
        lease, ttl = self.run.lease, self.executor.settings.LEASE_TTL_S
        next_renew = next_check = 0.0  # check at once: a cancel may predate the subscription
        while not self._done.is_set():
            try:
                signal = self.signals.next(timeout_s=0.25)
                if signal is not None:
                    self.run.request_stop(signal)
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + 1.0
                    if registry.cancel_requested(lease.job_id):
                        self.run.request_stop("cancel")
                    if workers.draining(self.executor.worker):
                        self.run.request_stop("shutdown")
                if now >= next_renew:
                    next_renew = now + ttl / 3
                    self._busy(lease.job_id)
                    if not registry.leases.renew(lease, ttl):
                        log.warning("job %s: lease %s lost", lease.job_id, lease.token)
                        self.run.request_stop("lease_lost")
            except Exception:  # Redis restarting: keep trying; the lease outlives short outages
                log.exception("job %s: control loop error", lease.job_id)
                time.sleep(0.5)

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._done.is_set():  # a pack's trial: stopped when it left, not again at the end
            return
        self._done.set()
        self._thread.join(timeout=5)
        self.signals.close()
        self._busy(None)


class JobExecutor:
    """One per worker process: connections are made once, jobs run one after another."""

    def __init__(
        self, settings: Settings, worker: str, enqueue: Callable[[str, str], None]
    ) -> None:
        redis = connect_redis(settings)
        self.settings, self.worker, self.enqueue = settings, worker, enqueue
        self.registry = JobRegistry(redis, settings.KEY_PREFIX)
        self.plans = PlanCache(redis, settings.KEY_PREFIX, settings.PLAN_CACHE_TTL_S)
        self.events = EventStream(redis, settings.KEY_PREFIX)
        self.workers = WorkerRegistry(redis, settings.KEY_PREFIX)
        self.store = S3ArtifactStore.from_settings(settings)
        self.catalog = DatasetCatalog(redis, self.store, settings.KEY_PREFIX, settings)
        self.sweeps = SweepRegistry(redis, settings.KEY_PREFIX, settings.REDIS_URL)
        self.trials = TrialReporter(self.sweeps)  # a sweep's trials report to its pruner
        self.runs: list[LeasedRun] = []  # what this process trains now: one job, or a pack

    def run(self, job_id: str) -> JobStatus:
        """Train the job if this worker can take it; returns the job's status afterwards."""
        current_job.set(job_id)  # every log line of this job carries its id
        s = self.settings
        got = self.registry.leases.acquire(job_id, self.worker, s.LEASE_TTL_S, s.MAX_ATTEMPTS)
        if got.outcome == "exhausted":
            return self._give_up(job_id, int(got.detail))
        if got.lease is None:  # held by a live worker (a redelivery), finished, or unknown
            log.info("job %s not started here: %s %s", job_id, got.outcome, got.detail)
            if got.outcome == "finished":
                return JobStatus(got.detail)
            return JobStatus.RUNNING if got.outcome == "held" else JobStatus.FAILED
        lease, job = got.lease, self.registry.get(job_id)
        log.info("job started: attempt %d, fence %d", lease.attempt, lease.fence)
        pack = [(lease, job), *self._claim_pack(job)]
        if len(pack) > 1:
            return self._run_pack(pack)
        self.runs = [run := self._leased_run(lease, job)]
        outcome: JobSummary | Exception
        try:
            with LeaseKeeper(self, run):
                outcome = fit(job.spec, run, job.micro_batch_size)
        except Exception as exc:
            outcome = exc
        finally:
            self.runs = []
        return self._settle(lease, job, outcome)

    def _leased_run(self, lease: Lease, job: JobRecord) -> LeasedRun:
        faults = (
            load_plan(self.registry, job, lease.attempt) if self.settings.FAULT_INJECTION else None
        )
        run = LeasedRun(self, lease, job, faults)
        run.predicted_peak_bytes = self._predicted(job)
        return run

    def _claim_pack(self, job: JobRecord) -> list[tuple[Lease, JobRecord]]:
        """For a sweep's trial: take the leases of queued trials of the same sweep, pack key
        and queue, up to the pack width; their queue messages find them held, and skip them.
        A trial claimed here and lost with this worker is resumed as any running job is."""
        key = pack_key(job.spec)
        if job.sweep_id is None or key is None or job.micro_batch_size:
            return []
        width, s = self._pack_width(job), self.settings
        gather_until = time.monotonic() + s.PACK_GATHER_S
        while self.sweeps.advancing(job.sweep_id) and time.monotonic() < gather_until:
            time.sleep(0.05)  # its sweep is queueing trials now: let the wave land first
        claimed: list[tuple[Lease, JobRecord]] = []
        for trial_id in self.sweeps.trial_jobs(job.sweep_id):
            if len(claimed) + 1 >= width:
                break
            try:
                trial = self.registry.get(trial_id)
            except JobNotFound:
                continue
            if (
                trial.id == job.id
                or trial.status != JobStatus.QUEUED
                or trial.queue != job.queue
                or trial.micro_batch_size
                or pack_key(trial.spec) != key
            ):
                continue
            got = self.registry.leases.acquire(trial_id, self.worker, s.LEASE_TTL_S, s.MAX_ATTEMPTS)
            if got.lease is not None:
                claimed.append((got.lease, self.registry.get(trial_id)))
        return claimed

    def _pack_width(self, job: JobRecord) -> int:
        """How many trials of this shape fit this worker at once: its memory class's share
        (or the memory free now) over one trial's predicted peak, capped by PACK_MAX_TRIALS.
        (A trial whose pack ran out of memory trains alone from then on: see _settle.)"""
        cap = self.settings.PACK_MAX_TRIALS
        per_trial = self._predicted(job)
        if not per_trial:
            return cap
        return max(1, min(cap, self._class_budget() // per_trial))

    def _class_budget(self) -> int:
        """Bytes this worker plans with: its memory class's share, else what is free now."""
        name = self.settings.WORKER_MEMORY_CLASS
        for klass in planning.parse_classes(self.settings.MEMORY_CLASSES):
            if klass.name == name:
                return int(klass.bytes * self.settings.MEMORY_HEADROOM)
        return self._memory_budget()

    def _run_pack(self, trials: list[tuple[Lease, JobRecord]]) -> JobStatus:
        """Train several trials as one pack (workers/trainer/pack.py). Each trial ends on its
        own record as it leaves the pack (done, cancelled, pruned, failed), exactly as it would
        alone, while the others go on. Returns the first trial's status."""
        log.info("training a pack of %d trials: %s", len(trials), [j.id for _, j in trials])
        self.runs = runs = [self._leased_run(lease, job) for lease, job in trials]
        for run in runs:  # the meter measures the pack's peak: compare it with K trials'
            if run.predicted_peak_bytes:
                run.predicted_peak_bytes *= len(trials)
        keepers = [LeaseKeeper(self, run, marks_busy=i == 0) for i, run in enumerate(runs)]
        statuses: dict[int, JobStatus] = {}

        def leave(i: int, outcome: JobSummary | BaseException) -> None:
            if i in statuses:
                return
            if keepers[i].marks_busy:  # another trial's keeper names the worker's job now
                keepers[i].marks_busy = False
                rest = [k for j, k in enumerate(keepers) if j != i and j not in statuses]
                if rest:
                    rest[0].marks_busy = True
            keepers[i].__exit__(None, None, None)
            lease, job = trials[i]
            statuses[i] = self._settle(lease, job, outcome, pack=len(trials))

        specs = [job.spec for _, job in trials]
        try:
            with contextlib.ExitStack() as stack:
                for keeper in keepers:
                    stack.enter_context(keeper)
                fit_pack(specs, runs, executor=self.settings.PACK_EXECUTOR, on_leave=leave)
        except Exception as exc:  # the pack as a whole (its data set, say): every trial left
            for i in range(len(trials)):
                leave(i, exc)
        finally:
            self.runs = []
        return statuses[0]

    def _settle(
        self, lease: Lease, job: JobRecord, outcome: JobSummary | BaseException, pack: int = 1
    ) -> JobStatus:
        """End one job's run on its record: what fit() returned or raised."""
        if isinstance(outcome, JobSummary):
            memory = outcome.memory
            return self._end(
                lease,
                JobStatus.SUCCEEDED,
                result=outcome.model_dump(mode="json"),
                measured_peak_bytes=memory.peak_step_tensor_bytes or "",
                memory_prediction_error=memory.prediction_error
                if memory.prediction_error is not None
                else "",
            )
        if isinstance(outcome, JobStopped):
            return self._after_stop(lease, outcome)
        if isinstance(outcome, LeaseLost):
            log.warning("job %s: %s; another worker owns it now", job.id, outcome)
            return JobStatus.RUNNING
        if isinstance(outcome, torch.OutOfMemoryError):
            if pack > 1:  # too wide: this trial trains alone from now on (a micro-batch of its
                # whole batch is the same training, and is never packed), wherever it resumes;
                # out of memory alone, it gets the planner's micro-batch as any job does
                return self._requeue(
                    lease,
                    f"out of memory in a pack of {pack} trials: it trains alone from here",
                    micro_batch_size=job.spec.batch_size,
                )
            return self._after_oom(lease, job, outcome)
        if isinstance(outcome, Diverged):  # deterministic: a retry would diverge again
            log.error("job %s: %s", job.id, outcome)
            return self._end(lease, JobStatus.FAILED, error=str(outcome))
        log.error("job %s failed", job.id, exc_info=outcome)
        return self._end(lease, JobStatus.FAILED, error=f"{type(outcome).__name__}: {outcome}")

    def drain(self) -> None:
        """SIGTERM in this process: hand the running job (or pack) back at its next step."""
        for run in self.runs:
            run.request_stop("shutdown")

    def _after_stop(self, lease: Lease, stop: JobStopped) -> JobStatus:
        if stop.reason == "cancel":
            return self._end(lease, JobStatus.CANCELLED, step=stop.step)
        if stop.reason == "pruned":  # by its sweep's pruner (LeasedRun.evaluated)
            reason = stop.detail or "pruned by its sweep"
            return self._end(lease, JobStatus.PRUNED, step=stop.step, error=reason)
        if stop.reason == "shutdown":  # checkpointed at this step: requeue for another worker
            return self._requeue(lease, "worker shutting down", requeues=1)
        return JobStatus.RUNNING  # lease lost: nothing of ours to write

    def _after_oom(self, lease: Lease, job: JobRecord, exc: torch.OutOfMemoryError) -> JobStatus:
        """Free the memory, pick the largest micro-batch the planner predicts will fit in the
        memory there is (not blind halving), and requeue: the next start resumes from the last
        checkpoint with gradient accumulation (same effective batch) and counts as an attempt."""
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        current = job.batch
        budget = getattr(exc, "budget_bytes", None) or self._memory_budget()
        probe = self._probe(job.spec)
        gpu = torch.cuda.is_available()
        fits = [
            m
            for m in range(current - 1, 0, -1)
            if planning.predict(probe, m)[1 if gpu else 0] <= budget
        ]
        if not fits:
            return self._end(
                lease,
                JobStatus.FAILED,
                error=f"out of memory even at a micro-batch of 1 "
                f"({budget / GIB:.2f} GiB available): {exc}",
            )
        micro = fits[0]
        need = planning.predict(probe, micro)[1 if gpu else 0]
        log.warning("out of memory at micro-batch %d; %d predicted to fit", current, micro)
        steps = -(-job.spec.batch_size // micro)
        return self._requeue(
            lease,
            f"out of memory: micro-batch {micro}, {steps}x accumulation "
            f"(predicted {need / GIB:.3f} of {budget / GIB:.3f} GiB)",
            micro_batch_size=micro,
        )

    def _probe(self, spec: JobSpec) -> planning.ProbeResult:
        """The planner's probe for this job (cached in Redis; measured here if missing)."""
        info = self.catalog.info_any(spec.dataset)
        shape = planning.plan_shape(spec, info.image, info.num_classes)
        cached = self.plans.get(shape.key)
        if cached is not None:
            return planning.ProbeResult.model_validate_json(cached)
        found = probe(shape.spec, shape.image, shape.classes)
        self.plans.put(shape.key, found.model_dump_json())
        return found

    def _predicted(self, job: JobRecord) -> int | None:
        """The planner's peak for this device at the batch this run will use."""
        try:
            cpu, gpu = planning.predict(self._probe(job.spec), job.batch)
        except Exception:  # planning is advice: never let it stop training
            log.exception("could not predict memory")
            return None
        return gpu if torch.cuda.is_available() and job.spec.device != "cpu" else cpu

    def _memory_budget(self) -> int:
        """Bytes a training step may use on this device now."""
        headroom = self.settings.MEMORY_HEADROOM
        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            return int((free + torch.cuda.memory_allocated()) * headroom)
        return int(psutil.virtual_memory().available * headroom)

    def _requeue(self, lease: Lease, reason: str, requeues: int = 0, **fields: Any) -> JobStatus:
        job = self.registry.get(lease.job_id)
        if requeues:
            fields["requeues"] = job.requeues + requeues  # holder-only field
        event = self._status_event(lease.attempt, reason=reason)
        try:
            self.registry.transition(
                job.id, JobStatus.QUEUED, event, lease, release=True, enqueued_at=utcnow(), **fields
            )
        except LeaseLost:
            return JobStatus.RUNNING
        self.registry.leases.log(job.id, "released", worker=self.worker, reason=reason)
        self.enqueue(job.id, job.queue or self.settings.QUEUE)  # lost: the reconciler resends
        return JobStatus.QUEUED

    def _end(self, lease: Lease, status: JobStatus, **fields: Any) -> JobStatus:
        event = self._status_event(lease.attempt, error=fields.get("error"))
        try:
            self.registry.transition(lease.job_id, status, event, lease, release=True, **fields)
        except (LeaseLost, IllegalTransition) as exc:
            log.warning("job %s: not marking %s: %s", lease.job_id, status.value, exc)
            return JobStatus.RUNNING
        self.registry.leases.log(lease.job_id, "released", worker=self.worker, reason=status.value)
        return status

    def _give_up(self, job_id: str, attempts: int) -> JobStatus:
        error = (
            f"gave up after {attempts} attempts that did not finish "
            f"(TRAINYARD_MAX_ATTEMPTS={self.settings.MAX_ATTEMPTS})"
        )
        event = self._status_event(attempts, error=error)
        try:
            self.registry.transition(job_id, JobStatus.FAILED, event, error=error)
        except IllegalTransition:
            return self.registry.get(job_id).status
        return JobStatus.FAILED

    def _status_event(self, attempt: int, **info: Any) -> JobEvent:
        """A status event from this worker; `attempt` is kept in info too (clients read it)."""
        return status_event(attempt, worker=self.worker, attempt=attempt, **info)
