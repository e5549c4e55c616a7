"""Why a queued job waits: the `pending` field of a queued job's API answer."""

from __future__ import annotations

from statistics import median

from shared.schemas import JobPublic, PendingInfo
from shared.state.heartbeats import WorkerRegistry
from shared.state.jobs import JobRegistry
from shared.state.records import JobRecord
from shared.status import JobStatus

BEING_PLANNED = (
    "being planned: the memory planner is measuring this model and data shape; the job is "
    "routed to a worker class when it ends, or fails if no class can hold it"
)


async def pending_info(
    job: JobRecord, registry: JobRegistry, workers: WorkerRegistry
) -> PendingInfo:
    """Why a queued job waits: its place in its class's queue, that class's workers, an ETA
    when one can be estimated from recent jobs' durations; or that it is being planned (its
    memory probe is running: no class chosen yet, see services/api/planner.py)."""
    if job.queue is None and job.planning:
        every = await workers.aonline()
        busy_any = sum(1 for w in every if w.busy_with)
        return PendingInfo(workers_online=len(every), workers_busy=busy_any, reason=BEING_PLANNED)
    klass = job.memory_class or "cpu"
    online = [w for w in await workers.aonline() if w.memory_class == klass]
    busy = sum(1 for w in online if w.busy_with)
    position = await registry.aqueue_position(job)
    eta = None
    if online and position is not None:
        recent = [d for d in await registry.arecent_durations() if d > 0]
        if recent:
            rounds = (position - 1 + busy) / len(online) + 1  # jobs ahead per worker, then ours
            eta = round(rounds * median(recent), 1)
    if not online:
        reason = (
            f"no worker of memory class {klass} is online"
            if job.memory_class
            else "no worker is online"
        )
    elif position is None:
        reason = "being handed to a worker"
    elif busy >= len(online):
        reason = (
            f"all {len(online)} {klass} workers are busy; {position - 1} jobs ahead in the queue"
        )
    else:
        reason = f"{position - 1} jobs ahead in the queue"
    return PendingInfo(
        queue_position=position,
        workers_online=len(online),
        workers_busy=busy,
        eta_s=eta,
        reason=reason,
    )


async def public_job(job: JobRecord, registry: JobRegistry, workers: WorkerRegistry) -> JobPublic:
    """The API's view of a stored job: a queued one says why it waits (`pending`)."""
    pending = await pending_info(job, registry, workers) if job.status is JobStatus.QUEUED else None
    return JobPublic.from_record(job, pending)
