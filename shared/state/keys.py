"""Every Redis key trainyard uses, named in one place.

Keys share a prefix (Settings.KEY_PREFIX, "trainyard" by default) so several deployments can
share one Redis. A job's keys all start with `{prefix}:job:{id}`; the job id is validated
against JOB_ID before it reaches here (no ':' can sneak in)."""

from __future__ import annotations

from typing import Any


class RedisKeys:
    """Key names. Job data: job, events, control, lease, fence, lease_log, the indexes.
    Worker data: workers, worker_*. Planner: plan_*. Inference: infer*. Data sets: datasets,
    owner_datasets."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    # --- jobs

    def job(self, job_id: str) -> str:
        """HASH: the job record (see records.JobRecord)."""
        return f"{self.prefix}:job:{job_id}"

    def jobs_by_time(self) -> str:
        """ZSET: every job id, scored by creation time in microseconds."""
        return f"{self.prefix}:jobs"

    def active(self) -> str:
        """SET of job keys: queued and running jobs, what the reconciler looks at."""
        return f"{self.prefix}:jobs:active"

    def owner_jobs(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}:jobs"

    def owner_prefix(self) -> str:
        """What scripts append `{owner}:active` to (an owner is only known inside them)."""
        return f"{self.prefix}:owner:"

    def owner_active(self, owner: str) -> str:
        return f"{self.owner_prefix()}{owner}:active"

    def queued(self, queue: str | None) -> str:
        """ZSET: queued jobs of one queue, ordered by when they entered `queued`: a job's place
        in line is its ZRANK. Scripts build it from `script_prefix()` (scripts.py: index_queued)."""
        return f"{self.prefix}:queued:{queue or ''}"

    def owner_queued(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}:queued"

    def script_prefix(self) -> str:
        """The prefix with its colon, passed to scripts that build index keys themselves."""
        return f"{self.prefix}:"

    def events(self, job_id: str) -> str:
        """STREAM: the job's events (events.EventStream)."""
        return f"{self.prefix}:job:{job_id}:events"

    def control(self, job_id: str) -> str:
        """Pub/sub channel: "cancel" for the worker training the job."""
        return f"{self.prefix}:job:{job_id}:control"

    def lease(self, job_id: str) -> str:
        """STRING "{fence}:{worker}" with a TTL: who trains the job now (leases.Leases)."""
        return f"{self.prefix}:job:{job_id}:lease"

    def fence(self, job_id: str) -> str:
        """Counter: the fencing number of the newest lease."""
        return f"{self.prefix}:job:{job_id}:fence"

    def lease_log(self, job_id: str) -> str:
        """STREAM: acquisitions, dropped duplicates, releases, reclaims."""
        return f"{self.prefix}:job:{job_id}:leases"

    def idempotency(self, owner: str, key: str) -> str:
        """STRING {"digest", "job_id"}: an Idempotency-Key's first submission."""
        return f"{self.prefix}:idem:{owner}:{key}"

    def stats(self) -> str:
        """HASH: submitted and finished:{status} counters for the metrics endpoint."""
        return f"{self.prefix}:stats"

    def faults(self, job_name: str) -> str:
        """Test-only fault plan, keyed by job name so a test can write it before it submits."""
        return f"{self.prefix}:faults:{job_name}"

    def no_queue(self) -> str:
        """A list nothing reads: where the create script pushes when there is no message."""
        return f"{self.prefix}:no-queue"

    def reconciler_lock(self) -> str:
        return f"{self.prefix}:reconciler:lock"

    # --- workers

    def workers(self) -> str:
        """HASH: worker name -> its last heartbeat (JSON)."""
        return f"{self.prefix}:workers"

    def worker_busy(self, worker: str) -> str:
        return f"{self.prefix}:worker:{worker}:busy"

    def worker_threads(self, worker: str) -> str:
        """HASH: pool process pid -> the thread counts it set (workers/trainer/cpu.py)."""
        return f"{self.prefix}:worker:{worker}:threads"

    def worker_control(self, worker: str) -> str:
        """Pub/sub channel: "drain" for every job the worker runs."""
        return f"{self.prefix}:worker:{worker}:control"

    def worker_draining(self, worker: str) -> str:
        return f"{self.prefix}:worker:{worker}:draining"

    # --- the memory planner

    def plan_cache(self, key: str) -> str:
        """STRING: a probe's result (JSON), for PLAN_CACHE_TTL_S."""
        return f"{self.prefix}:plan:{key}"

    def plan_waiting(self, key: str) -> str:
        """SET: ids of jobs waiting for key's probe."""
        return f"{self.prefix}:plan:waiting:{key}"

    def plan_inflight(self, key: str) -> str:
        """STRING: set while a planner worker is asked to probe (PROBING once it started)."""
        return f"{self.prefix}:plan:inflight:{key}"

    def plan_rate(self, owner: str) -> str:
        """Counter: an owner's probe requests this minute."""
        return f"{self.prefix}:plan:rate:{owner}"

    # --- inference requests (shared/state/inference.py)

    def inference(self, request_id: str) -> str:
        """HASH: one inference request: owner, job, kind, params (JSON), its answer once
        given; expires INFERENCE_RESULT_TTL_S after it was made."""
        return f"{self.prefix}:infer:{request_id}"

    def inference_input(self, request_id: str) -> str:
        """STRING: a predict request's images (raw uint8 N x C x H x W bytes), until the
        request is answered (by the inference worker, or the API's 504) or they expire
        (INFERENCE_RESULT_TTL_S)."""
        return f"{self.prefix}:infer:{request_id}:input"

    # --- data sets

    def datasets(self) -> str:
        """HASH: data set id -> its record (JSON)."""
        return f"{self.prefix}:datasets"

    def owner_datasets(self, owner: str) -> str:
        """HASH: an owner's data set id -> its stored size in bytes (the quota)."""
        return f"{self.prefix}:owner:{owner}:datasets"


def text(value: Any) -> str:
    """A Redis reply (bytes) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


class SweepKeys:
    """Sweep key names, under the job keys' prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def sweep(self, sweep_id: str) -> str:
        """HASH: the sweep record (SweepRecord)."""
        return f"{self.prefix}:sweep:{sweep_id}"

    def trials(self, sweep_id: str) -> str:
        """HASH: trial number -> {number, job_id, params, value, state} (JSON)."""
        return f"{self.prefix}:sweep:{sweep_id}:trials"

    def trial_jobs(self, sweep_id: str) -> str:
        """LIST: the trials' job ids, in the order they were created."""
        return f"{self.prefix}:sweep:{sweep_id}:jobs"

    def lock(self, sweep_id: str) -> str:
        """STRING with a TTL: held while one process advances the sweep."""
        return f"{self.prefix}:sweep:{sweep_id}:lock"

    def study(self, sweep_id: str) -> str:
        """The prefix of the sweep's Optuna journal (`{it}:log_number`, `{it}:log:N`)."""
        return f"{self.prefix}:sweep:{sweep_id}:optuna"

    def all(self) -> str:
        """ZSET: every sweep id, scored by creation time (microseconds)."""
        return f"{self.prefix}:sweeps"

    def owner(self, owner: str) -> str:
        """ZSET: an owner's sweep ids, scored by creation time."""
        return f"{self.prefix}:owner:{owner}:sweeps"

    def running(self) -> str:
        """SET: sweeps not finished yet: what the reconciler advances."""
        return f"{self.prefix}:sweeps:running"

    def owner_running(self, owner: str) -> str:
        """SET: an owner's sweeps not finished yet (SWEEP_MAX_RUNNING_PER_OWNER counts them)."""
        return f"{self.prefix}:owner:{owner}:sweeps:running"

    def idempotency(self, owner: str, key: str) -> str:
        """STRING {"digest", "sweep_id"}: an Idempotency-Key's first sweep."""
        return f"{self.prefix}:idem-sweep:{owner}:{key}"
