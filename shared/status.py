"""Job states and the one table of legal moves between them."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # A sweep's trial stopped early by the sweep's pruner (docs/sweeps.md); `error` says why.
    PRUNED = "pruned"

    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PRUNED})

# running -> queued is a requeue: a worker shutting down hands the job back to the queue.
_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.QUEUED,
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.PRUNED,
        }
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
    JobStatus.PRUNED: frozenset(),
}


class IllegalTransition(ValueError):
    def __init__(self, current: JobStatus, target: JobStatus) -> None:
        super().__init__(f"cannot move a job from {current.value} to {target.value}")
        self.current = current
        self.target = target


def can_transition(current: JobStatus, target: JobStatus) -> bool:
    """True when a job in `current` may move to `target`."""
    return target in _ALLOWED[current]


def sources_of(target: JobStatus) -> list[JobStatus]:
    """Every state a job may move to `target` from (used by the atomic Redis transition)."""
    return [s for s, allowed in _ALLOWED.items() if target in allowed]


def check_transition(current: JobStatus, target: JobStatus) -> None:
    """Raise IllegalTransition unless `current` -> `target` is legal."""
    if not can_transition(current, target):
        raise IllegalTransition(current, target)
