"""Every wire message, in one module: used by the API, the worker, the SDK and the tests."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared.status import JobStatus

# --- Job specs (input): what to train. extra="forbid" so a typo is a 422, not a silent default.


class _TrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=100, description="Free-form label for people")
    epochs: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(64, ge=1, le=4096)
    lr: float = Field(3e-3, gt=0, le=1.0, description="Adam learning rate")
    max_steps: int | None = Field(
        None, ge=1, le=10_000_000, description="Stop after this many optimiser steps"
    )
    checkpoint_every: int = Field(500, ge=1, le=10_000_000, description="Steps between checkpoints")
    sample_every: int = Field(500, ge=1, le=10_000_000, description="Steps between sample grids")
    log_every: int = Field(10, ge=1, le=100_000, description="Steps between metric events")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class ClassifierSpec(_TrainSpec):
    """Train an image classifier (BOOK.md §2)."""

    task: Literal["classifier"] = "classifier"
    model: Literal["book_cnn"] = "book_cnn"
    dataset: Literal["mnist-5k", "fake"] = "mnist-5k"


# Discriminated on `task`: each training task has its own spec class.
JobSpec = Annotated[ClassifierSpec, Field(discriminator="task")]
JobSpecAdapter: TypeAdapter[JobSpec] = TypeAdapter(JobSpec)


# --- Job records (output).


class JobPublic(BaseModel):
    """A job as the API returns it."""

    id: str
    status: JobStatus
    spec: JobSpec
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    step: int = 0
    epoch: int = 0
    total_steps: int | None = None
    cancel_requested: bool = False
    worker: str | None = None
    error: str | None = None
    result: dict[str, Any] | None = None


class JobsPublic(BaseModel):
    """A page of jobs, newest first."""

    data: list[JobPublic]
    count: int
    total: int


# --- Events on a job's Redis Stream.

EventKind = Literal["status", "step", "epoch", "checkpoint", "sample", "memory", "log"]


class JobEvent(BaseModel):
    """One event on a job's stream: training metrics, a checkpoint, a status change..."""

    id: str | None = Field(None, description="Redis Stream id, set when read back")
    kind: EventKind
    time: float
    step: int = 0
    epoch: int = 0
    metrics: dict[str, float] = {}
    info: dict[str, Any] = {}


class JobEventsPublic(BaseModel):
    """A job's event history."""

    data: list[JobEvent]
    count: int


# --- Artifacts.


class ArtifactPublic(BaseModel):
    """One object under the job's prefix, with a presigned GET URL."""

    key: str
    size: int
    url: str


class ArtifactsPublic(BaseModel):
    data: list[ArtifactPublic]
    count: int


# --- Results a worker writes next to the artifacts.


class MemoryReport(BaseModel):
    """Peak memory of one job. GPU figures come only from CUDA; host RSS is labelled as such."""

    device: str
    device_name: str
    peak_gpu_allocated_bytes: int | None = None
    peak_gpu_reserved_bytes: int | None = None
    gpu_total_bytes: int | None = None
    peak_host_rss_bytes: int | None = None
    note: str


class JobSummary(BaseModel):
    """summary.json: what a finished job achieved."""

    job_id: str
    task: str
    model: str
    dataset: str
    steps: int
    epochs: int
    wall_s: float
    images_per_s: float
    metrics: dict[str, float]
    memory: MemoryReport


# --- Health.


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str]


class Message(BaseModel):
    detail: str


# --- Checkpoint manifest (latest.json): the commit point of a checkpoint.


class CheckpointRef(BaseModel):
    key: str
    step: int
    epoch: int
    sha256: str
    size: int


class CheckpointManifest(CheckpointRef):
    """latest.json. Written after its step file, so a manifest always names a whole file.

    `history` keeps the previous valid checkpoints, newest first, to fall back on."""

    history: list[CheckpointRef] = []
