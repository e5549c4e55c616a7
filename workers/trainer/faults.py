"""Test-only fault injection: crash the worker process or raise a GPU out-of-memory error at
a given step, so the reliability tests can exercise recovery with real processes.

Active only when TRAINYARD_FAULT_INJECTION is on (refused in production). A test writes the
plan into the Redis hash `{prefix}:faults:{job name}` before it submits the job (so no worker
can start the job before the plan is there), then submits a job of that name:
`exit_at_step` (os._exit, like kill -9 mid-step), `oom_at_step` (torch.OutOfMemoryError),
`nan_at_step` (that step's losses become NaN, as a diverging run's would), and `attempts`
("1,2" = only on those attempts; absent = every attempt)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from shared.state.jobs import JobRegistry
from shared.state.records import JobRecord


@dataclass(frozen=True)
class FaultPlan:
    exit_at_step: int | None = None
    oom_at_step: int | None = None
    oom_budget_bytes: int | None = None  # the memory the injected OOM pretends there is
    nan_at_step: int | None = None  # applied by the run to the step's losses (job.py)

    def trigger(self, step: int) -> None:
        if step == self.exit_at_step:
            os._exit(137)  # no cleanup, no ack: exactly what the OOM killer leaves behind
        if step == self.oom_at_step:
            error = torch.OutOfMemoryError(f"CUDA out of memory (injected at step {step})")
            error.budget_bytes = self.oom_budget_bytes  # type: ignore[attr-defined]
            raise error


def load_plan(registry: JobRegistry, job: JobRecord, attempt: int) -> FaultPlan | None:
    if not job.spec.name:
        return None
    raw = registry.fault_plan(job.spec.name)
    if not raw:
        return None
    attempts = raw.get("attempts")
    if attempts and str(attempt) not in attempts.split(","):
        return None

    def step(name: str) -> int | None:
        return int(raw[name]) if name in raw else None

    return FaultPlan(
        step("exit_at_step"), step("oom_at_step"), step("oom_budget_bytes"), step("nan_at_step")
    )
