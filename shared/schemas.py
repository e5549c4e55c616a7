"""Every wire message, in one module: used by the API, the worker, the SDK and the tests."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from shared.status import JobStatus
from shared.zoo import BUILTIN_DATASETS, MODELS

if TYPE_CHECKING:
    from shared.state.records import JobRecord

# --- Job specs (input): what to train. extra="forbid" so a typo is a 422, not a silent default.
# Numbers and flags are strict (Field(strict=True)): `"epochs": true` or `"epochs": "3"` is a
# 422 naming the field, never read as 1 or 3. A float field takes an integer (`"lr": 1`).

UPLOADED_DATASET = re.compile(r"^ds-[0-9a-f]{16}$")
# Documented in the OpenAPI document; _known_dataset() gives the friendlier message.
DATASET_PATTERN = r"^(" + "|".join(BUILTIN_DATASETS) + r"|ds-[0-9a-f]{16})$"
Side = Annotated[int, Field(strict=True, ge=1, le=1024)]
# Unicode categories refused in labels people read (job and data set names, class names):
# controls, line breaks, and invisible format characters (zero-width spaces, bidi overrides
# that make one name look like another).
UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp"})


def first_unprintable(text: str) -> str | None:
    """The first character of `text` in an UNPRINTABLE category, or None."""
    return next((ch for ch in text if unicodedata.category(ch) in UNPRINTABLE), None)


def _fixed_array(n: int, item: dict[str, Any]) -> WithJsonSchema:
    """A tuple documented as an array of `n` items. Pydantic's own form (`prefixItems`)
    tripped Schemathesis' response checks, and every client reads the plain one."""
    return WithJsonSchema({"type": "array", "items": item, "minItems": n, "maxItems": n})


# [height, width]
SidePair = Annotated[
    tuple[Side, Side], _fixed_array(2, {"type": "integer", "minimum": 1, "maximum": 1024})
]
SPEED_FLAGS = ("amp", "channels_last", "compile")  # opt-in, off by default, fast mode only


class _TrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=100, description="Free-form label for people")
    model: str  # each task narrows this to its models
    mode: Literal["fast", "book"] = Field(
        "fast",
        description="book: the book's exact recipe (batch 1, its optimiser and lr); "
        "fast: batched and tuned",
    )
    dataset: str = Field(
        "mnist-5k",
        description="mnist-5k, mnist, fashion-mnist, fake, or the "
        "id of an uploaded data set (ds-...)",
        json_schema_extra={"pattern": DATASET_PATTERN},
    )
    crop: Side | SidePair | None = Field(
        None, description="Centre-crop to this side (or [height, width]) before resizing"
    )
    resize: Side | SidePair | None = Field(
        None, description="Resize to this side (or [height, width]); grey->RGB is automatic"
    )
    epochs: int = Field(10, strict=True, ge=1, le=1000)
    batch_size: int = Field(64, strict=True, ge=1, le=4096)
    lr: float = Field(3e-3, strict=True, gt=0, le=1.0, description="Adam learning rate")
    max_steps: int | None = Field(
        None, strict=True, ge=1, le=10_000_000, description="Stop after this many optimiser steps"
    )
    checkpoint_every: int = Field(
        500, strict=True, ge=1, le=10_000_000, description="Steps between checkpoints"
    )
    sample_every: int = Field(
        500, strict=True, ge=1, le=10_000_000, description="Steps between sample grids"
    )
    log_every: int = Field(
        10, strict=True, ge=1, le=100_000, description="Steps between metric events"
    )
    seed: int = Field(0, strict=True, ge=0, le=2**31 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Opt-in speed-ups aimed at CUDA (they also run on CPU); fast mode only.
    amp: bool = Field(
        False,
        strict=True,
        description="Opt-in, aimed at CUDA: run the training forward passes under bf16 "
        "autocast (losses stay float32, no GradScaler needed). Fast mode only",
    )
    channels_last: bool = Field(
        False,
        strict=True,
        description="Opt-in, aimed at CUDA: keep conv weights and image batches in the "
        "channels_last memory format (no effect on fully-connected models). Fast mode only",
    )
    compile: bool = Field(
        False,
        strict=True,
        description="Opt-in, aimed at CUDA: torch.compile the model(s) for training; the "
        "first steps pay the compilation, checkpoints are unchanged. Fast mode only",
    )

    # Fast-mode defaults per task; book mode takes the book's (docs/book.md) instead.
    FAST_DEFAULTS: ClassVar[dict[str, Any]] = {}

    @model_validator(mode="before")
    @classmethod
    def _mode_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        model = MODELS.get(str(data.get("model", cls.model_fields["model"].default)))
        if data.get("mode") == "book" and model is not None:
            defaults = {"batch_size": 1, "lr": model.book_lr, "epochs": model.book_epochs}
        else:
            defaults = cls.FAST_DEFAULTS
            if model is not None and model.fast_lr is not None:
                defaults = {**defaults, "lr": model.fast_lr}
        return {**defaults, **data}

    @model_validator(mode="after")
    def _book_is_exact(self) -> Self:
        if self.mode == "book":
            book_lr = MODELS[self.model].book_lr
            if self.batch_size != 1:
                raise _field_error("batch_size", "book mode trains with batch size 1, as the book")
            if self.lr != book_lr:
                raise _field_error("lr", f"book mode uses the book's lr {book_lr}")
            if flags := self.speed_flags():
                raise _field_error(
                    flags[0], "book mode is the book's exact recipe (float32, eager); use fast mode"
                )
        return self

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: str | None) -> str | None:
        bad = None if value is None else first_unprintable(value)
        if bad is not None:
            raise ValueError(
                f"contains the invisible or control character {bad!r} (U+{ord(bad):04X}); "
                "expected text"
            )
        return value

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in BUILTIN_DATASETS and not UPLOADED_DATASET.match(value):
            known = ", ".join(BUILTIN_DATASETS)
            raise ValueError(f"unknown data set {value!r}: use {known}, or an uploaded id (ds-...)")
        return value

    def speed_flags(self) -> list[str]:
        """The opt-in speed flags that are on, in SPEED_FLAGS order."""
        return [flag for flag in SPEED_FLAGS if getattr(self, flag)]

    def crop_hw(self) -> tuple[int, int] | None:
        return _hw(self.crop)

    def resize_hw(self) -> tuple[int, int] | None:
        return _hw(self.resize)


class ClassifierSpec(_TrainSpec):
    """Train an image classifier (Make Your First GAN With PyTorch, ch. 3, §3.1.6; docs/book.md)."""

    task: Literal["classifier"] = "classifier"
    model: Literal["book_cnn", "book_mlp"] = "book_cnn"

    FAST_DEFAULTS: ClassVar[dict[str, Any]] = {"batch_size": 128, "lr": 1e-2, "epochs": 10}


class GanSpec(_TrainSpec):
    """Train a GAN (Make Your First GAN With PyTorch, ch. 3, §3.1; conv_gan sized to the data)."""

    task: Literal["gan"] = "gan"
    model: Literal["conv_gan", "book_conv_gan", "book_mlp_gan"] = "conv_gan"
    activation: Literal["leaky_relu", "gelu"] = Field(
        "leaky_relu", description="book_conv_gan only: gelu is the book's refinement"
    )

    # DCGAN's lr; conv_gan and conv_cgan take 2e-3 (shared/zoo.py fast_lr, bench/RESULTS.md:
    # mnist-5k's 1,890 steps are too few for 2e-4). The EMA generator and conv_gan's
    # self-conditioning are recipes.FAST_TRICKS.
    FAST_DEFAULTS: ClassVar[dict[str, Any]] = {"batch_size": 64, "lr": 2e-4, "epochs": 30}

    @model_validator(mode="after")
    def _gelu_only_for_book_conv(self) -> Self:
        if self.activation == "gelu" and self.model != "book_conv_gan":
            raise _field_error("activation", "the GELU variant exists for book_conv_gan only")
        return self


class CganSpec(_TrainSpec):
    """Train a label-conditioned GAN (Make Your First GAN With PyTorch, ch. 3, §3.2; conv_cgan sized
    to the data)."""

    task: Literal["cgan"] = "cgan"
    model: Literal["book_cgan", "conv_cgan"] = "conv_cgan"

    # DCGAN's lr; conv_gan and conv_cgan take 2e-3 (shared/zoo.py fast_lr, bench/RESULTS.md:
    # mnist-5k's 1,890 steps are too few for 2e-4). The EMA generator is recipes.FAST_TRICKS.
    FAST_DEFAULTS: ClassVar[dict[str, Any]] = {"batch_size": 64, "lr": 2e-4, "epochs": 30}


# Discriminated on `task`: each training task has its own spec class.
JobSpec = Annotated[ClassifierSpec | GanSpec | CganSpec, Field(discriminator="task")]
JobSpecAdapter: TypeAdapter[JobSpec] = TypeAdapter(JobSpec)


def _hw(value: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if value is None:
        return None
    return (value, value) if isinstance(value, int) else value


def _field_error(field: str, message: str) -> PydanticCustomError:
    """A cross-field rule's error. A model validator's error has the model as its location, so
    the field at fault travels in ctx["field"]; the API's 422 names it (services/api/errors.py)."""
    return PydanticCustomError("spec_conflict", "{message}", {"field": field, "message": message})


# --- Job records (output).


class HealthWarning(BaseModel):
    """A training-health warning (docs/quality.md): the job goes on and may still succeed."""

    code: Literal["d_wins", "mode_collapse", "chance_accuracy"] = Field(
        description="d_wins: D rejects every fake and G's loss sits at BCE's clamp; "
        "mode_collapse: the fixed-seed samples are near-identical; chance_accuracy: a "
        "classifier's held-out accuracy is still at chance"
    )
    step: int = Field(description="The step it was seen at")
    message: str


class JobPublic(BaseModel):
    """A job as the API returns it."""

    id: str
    owner: str | None = None
    status: JobStatus
    spec: JobSpec
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = Field(0, description="How many times a worker started the job")
    requeues: int = Field(0, description="Graceful hand-backs (worker shutdown); not failures")
    enqueued_at: datetime | None = None
    memory_class: str | None = Field(None, description="The worker memory class it was routed to")
    queue: str | None = Field(
        None,
        description="The queue it was routed to; absent while it is being planned (a new "
        "model/data shape's memory probe is running; pending.reason says so)",
    )
    predicted_peak_gpu_bytes: int | None = Field(
        None, description="Predicted before it ran: peak GPU tensor memory of a training step"
    )
    predicted_peak_cpu_bytes: int | None = Field(
        None, description="The same on a CPU worker (host tensor bytes)"
    )
    measured_peak_bytes: int | None = Field(
        None,
        description="After the run: peak GPU allocated bytes on CUDA, the profiler's peak "
        "step tensor bytes on CPU (see memory.json)",
    )
    memory_prediction_error: float | None = Field(
        None, description="(predicted - measured) / measured, for the device it ran on"
    )
    micro_batch_size: int | None = Field(
        None,
        description="Set after a GPU out-of-memory: batches are split into micro-batches "
        "of this size with gradient accumulation (same effective batch)",
    )
    step: int = 0
    epoch: int = 0
    total_steps: int | None = None
    cancel_requested: bool = False
    worker: str | None = None
    sweep_id: str | None = Field(None, description="The sweep this job is a trial of")
    trial: int | None = Field(None, description="Its trial number in that sweep (Optuna's)")
    pending: PendingInfo | None = Field(None, description="Queued jobs only: why it waits")
    error: str | None = None
    warnings: list[HealthWarning] = Field(
        default_factory=list, description="Training-health warnings, oldest first"
    )
    result: dict[str, Any] | None = None

    @classmethod
    def from_record(cls, record: JobRecord, pending: PendingInfo | None = None) -> JobPublic:
        """The public view of a stored job (shared/state/records.py), with why it waits. The
        spec is passed on as read (records.stored_spec), not checked against today's rules."""
        public = record.model_dump(include=set(cls.model_fields) - {"pending", "spec"})
        return cls.model_validate({**public, "spec": record.spec, "pending": pending})

    @property
    def being_planned(self) -> bool:
        """Accepted while the planner measures its model and data shape: not routed yet; it
        will be, or fail with the planner's reason (README, "Memory planning")."""
        return self.status is JobStatus.QUEUED and self.queue is None and not self.memory_class


class PendingInfo(BaseModel):
    """Why a queued job is waiting."""

    queue_position: int | None = Field(None, description="1 = next to be taken by a worker")
    workers_online: int
    workers_busy: int
    eta_s: float | None = Field(
        None,
        description="Estimated seconds until it starts, from "
        "recent jobs' durations; absent when it cannot be estimated",
    )
    reason: str


class WorkerPublic(BaseModel):
    name: str
    seen: float
    busy_with: str | None = None
    memory_class: str = "cpu"
    device: str = "cpu"
    gpu_name: str | None = None
    gpu_total_bytes: int | None = None
    gpu_free_bytes: int | None = None
    # CPU sizing (workers/trainer/cpu.py): what the worker's pool processes actually run
    # with. None until a pool process has reported.
    cpu_quota: float | None = Field(None, description="Cores the worker may use")
    concurrency: int | None = Field(None, description="Celery pool processes")
    torch_threads: int | None = Field(None, description="torch intra-op threads per process")
    interop_threads: int | None = Field(None, description="torch inter-op threads per process")
    loader_threads: int | None = Field(None, description="Data loading threads per process")
    writer_threads: int | None = Field(None, description="Checkpoint/artifact writer threads")


class JobsPublic(BaseModel):
    """A page of jobs, newest first; pass next_cursor as `cursor` for the next page."""

    data: list[JobPublic]
    count: int
    next_cursor: str | None = None


# --- Sweeps (docs/sweeps.md): one request, many trials, each an ordinary job.

SWEEP_ID = r"^sw-[0-9a-f]{16}$"
SWEEP_TRIALS_LIMIT = 10_000  # the document's bound; TRAINYARD_SWEEP_MAX_TRIALS is the real cap
# A space's parameter: a job spec field's name.
PARAM_NAME = r"^[a-z_]{1,40}$"
ChoiceValue = bool | int | float | str


class FloatParam(BaseModel):
    """A float range: uniform, or log-uniform (`log`), or on a grid of `step`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["float"]
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    log: bool = False
    step: float | None = Field(None, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        _check_range(self.low, self.high, self.log, self.step)
        return self


class IntParam(BaseModel):
    """An integer range, both ends included: every `step`, or log-uniform (`log`)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["int"]
    low: int = Field(strict=True, ge=-(2**31), le=2**31 - 1)
    high: int = Field(strict=True, ge=-(2**31), le=2**31 - 1)
    log: bool = False
    step: int = Field(1, strict=True, ge=1, le=2**31 - 1)

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        _check_range(self.low, self.high, self.log, None if self.step == 1 else self.step)
        return self


class ChoiceParam(BaseModel):
    """One of `values`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["choice"]
    values: list[ChoiceValue] = Field(min_length=1, max_length=64)


Param = Annotated[FloatParam | IntParam | ChoiceParam, Field(discriminator="type")]


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if low > high:
        raise _field_error("low", f"low {low} is above high {high}")
    if log and low <= 0:
        raise _field_error("low", "a log range needs low > 0")
    if log and step is not None:
        raise _field_error("step", "a range is either log or stepped, not both")


class SweepMetric(BaseModel):
    """What a sweep optimises: a number of the trial's result (summary.json `metrics`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[a-z_]{1,40}$",
        description="test_accuracy for classifiers; fd (fid for unlabelled uploads) for GANs",
    )
    direction: Literal["maximize", "minimize"]


class MedianPrunerSpec(BaseModel):
    """Optuna's MedianPruner: stop a trial whose best value so far is worse than the median
    of earlier trials' values after as many epochs (Optuna's step is epochs done, so trials
    of another batch_size compare too). Classifier bases only: a GAN reports no per-epoch
    metric (a pruner on a GAN base is a 422 naming `pruner`)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["median"] = "median"
    n_startup_trials: int = Field(5, strict=True, ge=0, le=10_000)
    n_warmup_steps: int = Field(
        0,
        strict=True,
        ge=0,
        le=10_000_000,
        description="Epochs a trial trains before it may be pruned (Optuna's steps are epochs)",
    )


class SweepSpec(BaseModel):
    """POST /v1/sweeps: train `n_trials` variants of `base`, each a job, with the parameters
    of `space` drawn by `sampler`, optimising `metric`."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=100, description="Free-form label for people")
    base: JobSpec
    space: dict[Annotated[str, Field(pattern=PARAM_NAME)], Param] = Field(
        min_length=1,
        max_length=16,
        description="Job spec field -> {type: float|int|choice, low, high, log, step | values}",
    )
    n_trials: int = Field(
        strict=True,
        ge=1,
        le=SWEEP_TRIALS_LIMIT,
        description="Trials to run; at most TRAINYARD_SWEEP_MAX_TRIALS (and a grid's size)",
    )
    sampler: Literal["grid", "random", "tpe"] = "tpe"
    metric: SweepMetric | None = Field(
        None,
        description="Default: test_accuracy (maximize) for classifiers, the GAN quality "
        "metric (fd, or fid for unlabelled uploads; minimize) for GANs",
    )
    pruner: MedianPrunerSpec | None = Field(None, description="Early stopping; none by default")
    parallel: int = Field(16, strict=True, ge=1, le=256, description="Trials in flight at once")
    seed: int = Field(0, strict=True, ge=0, le=2**31 - 1, description="The sampler's seed")

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: str | None) -> str | None:
        bad = None if value is None else first_unprintable(value)
        if bad is not None:
            raise ValueError(f"contains the invisible or control character {bad!r}")
        return value

    @field_validator("base", mode="wrap")
    @classmethod
    def _base_names_its_field(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """A bad base is a 422 naming `base.<field>` (the API's error names the top-level
        field otherwise: `base`)."""
        try:
            return handler(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            ctx = first.get("ctx") or {}
            if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
                field = "task"
            elif isinstance(ctx.get("field"), str):
                field = ctx["field"]
            else:
                parts = [p for p in first["loc"] if isinstance(p, str)]
                parts = [p for p in parts if p not in ("classifier", "gan", "cgan")]
                field = parts[0] if parts else ""
            where = f"base.{field}" if field else "base"
            raise _field_error(where, first["msg"]) from exc


SweepStatus = Literal["running", "finished", "cancelled"]


class SweepTrial(BaseModel):
    """One trial: its job, the parameters it was given, and its value once it finished."""

    number: int = Field(description="Optuna's trial number, 0 first")
    job_id: str | None = Field(None, description="Absent while it waits for room in the queue")
    status: JobStatus | None = None
    params: dict[str, Any]
    value: float | None = Field(None, description="The metric, once it succeeded")
    reason: str | None = Field(None, description="Why it failed, was cancelled or pruned")


class SweepBest(BaseModel):
    trial: int
    job_id: str
    params: dict[str, Any]
    value: float


class SweepPublic(BaseModel):
    """A sweep as the API returns it."""

    id: str
    owner: str | None = None
    name: str | None = None
    status: SweepStatus = Field(
        description="running; finished once every trial has ended; cancelled"
    )
    spec: SweepSpec
    metric: SweepMetric = Field(description="The metric in use (the spec's, or the default)")
    created_at: datetime
    finished_at: datetime | None = None
    cancel_requested: bool = False
    n_trials: int = Field(description="Trials it will run (n_trials, or a smaller grid)")
    asked: int = Field(description="Trials asked of the sampler so far")
    counts: dict[str, int] = Field(description="Trials by job status")
    waiting: str | None = Field(None, description="Why no more trials are queued now")
    best: SweepBest | None = Field(None, description="The best succeeded trial so far")
    trials: list[SweepTrial]


class SweepsPublic(BaseModel):
    """The caller's sweeps, newest first."""

    data: list[SweepPublic]
    count: int


# --- Events on a job's Redis Stream.

EventKind = Literal[
    "status",
    "step",
    "epoch",
    "checkpoint",
    "sample",
    "quality",
    "warning",
    "memory",
    "log",
    "rewind",
]


class JobEvent(BaseModel):
    """One event on a job's stream: training metrics, a checkpoint, a status change...

    A restarted job writes a `rewind` event first: `step` is the checkpoint it resumed from and
    `attempt` the new attempt. Events of earlier attempts past that step are superseded
    (shared/state/events.py: /metrics leaves them out, SSE clients drop what they drew past it)."""

    id: str | None = Field(None, description="Redis Stream id, set when read back")
    kind: EventKind
    time: float
    attempt: int = Field(
        0,
        ge=0,
        description="The attempt that wrote it (1 = the first start); 0 before any start",
    )
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
    path: str = Field(description="Relative to the job: GET /v1/jobs/{id}/artifacts/{path}")
    size: int
    url: str


class ArtifactsPublic(BaseModel):
    data: list[ArtifactPublic]
    count: int


# --- Inference: samples from a trained GAN, predictions of a trained classifier.

INFERENCE_MAX_IMAGES = 1024  # n of a samples request, images in one predict batch
# A checkpoint to use: "final" (final/model.pt), "best" (final/best.pt) or a step whose
# checkpoint is kept (checkpoints/step-N.pt). As a query parameter: the same, the step as digits.
CheckpointName = Literal["best", "final"]
Checkpoint = CheckpointName | Annotated[int, Field(strict=True, ge=0, le=10**12 - 1)]
CHECKPOINT_PATTERN = r"^(best|final|[0-9]{1,12})$"


class SampleRequest(BaseModel):
    """POST /v1/jobs/{id}/samples: images from a trained GAN (`gan` or `cgan` job)."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(64, strict=True, ge=1, le=INFERENCE_MAX_IMAGES, description="Images to draw")
    labels: list[Annotated[int, Field(strict=True, ge=0)]] | None = Field(
        None,
        max_length=INFERENCE_MAX_IMAGES,
        description="cGAN only: one label for every image, or exactly n; each in "
        "[0, num_classes). Not given on a cGAN: the labels cycle 0..K-1",
    )
    seed: int = Field(0, strict=True, ge=0, le=2**63 - 1, description="Same seed, same images")
    checkpoint: Checkpoint = Field(
        "final", description='"final", "best" or a step with a kept checkpoint'
    )

    @model_validator(mode="after")
    def _labels_fit_n(self) -> Self:
        if self.labels is not None and len(self.labels) not in (1, self.n):
            raise _field_error(
                "labels",
                f"{len(self.labels)} labels for n={self.n} images; give one label for all, "
                "or exactly n",
            )
        return self

    def label_list(self, num_classes: int) -> list[int] | None:
        """The label of each image: None for an unconditional GAN (num_classes 0), the
        labels given (one repeated n times), or 0..K-1 cycling when none were given."""
        if not num_classes:
            return None
        if self.labels is None:
            return [i % num_classes for i in range(self.n)]
        return self.labels * self.n if len(self.labels) == 1 else list(self.labels)


class ArtifactLink(BaseModel):
    """An object the request stored among the job's artifacts."""

    key: str = Field(description="The object key")
    path: str = Field(description="Relative to the job: GET /v1/jobs/{id}/artifacts/{path}")
    url: str = Field(description="Presigned GET URL, valid PRESIGN_EXPIRY_S")


class ImagesLink(ArtifactLink):
    """The .npz of the samples: `images` (uint8, N x C x H x W) and `labels` (int64, N; -1
    for an unconditional GAN)."""

    shape: Annotated[
        tuple[int, int, int, int], _fixed_array(4, {"type": "integer", "minimum": 1})
    ] = Field(description="[N, C, H, W]")
    dtype: Literal["uint8"] = "uint8"


class SamplesPublic(BaseModel):
    """The answer to a samples request: the grid and the images, stored under
    samples-on-demand/ with names derived from the request (the same request, the same keys
    and bytes)."""

    job_id: str
    checkpoint: Checkpoint = Field(description="As asked")
    step: int = Field(description="The training step of the weights used")
    seed: int
    n: int
    labels: list[int] | None = Field(
        description="The label of each image (cGAN), null for an unconditional GAN"
    )
    grid: ArtifactLink = Field(description="A PNG grid of the images, 8 per row")
    images: ImagesLink


class PredictionsPublic(BaseModel):
    """The answer to a predict request, one row per image in the order given. The book's
    classifiers end in a Sigmoid (one independent score per class), so `probabilities` are
    those scores normalised to sum 1 over the data set's classes."""

    job_id: str
    checkpoint: Checkpoint = Field(description="As asked")
    step: int = Field(description="The training step of the weights used")
    classes: list[str] = Field(description="The data set's class names, index order")
    probabilities: list[list[float]] = Field(description="N x K, each row sums to 1")
    predicted: list[int] = Field(description="The most probable class of each image")
    predicted_class: list[str]


class InferencePending(BaseModel):
    """202: the inference worker has not answered within INFERENCE_WAIT_S; poll `poll` (also
    the Location header) until it answers 200 (the body the request would have given) or an
    error."""

    request_id: str
    status: Literal["pending"] = "pending"
    poll: str = Field(description="/v1/inference/{request_id}")


# --- Results a worker writes next to the artifacts.


class MemoryReport(BaseModel):
    """Memory of one job, each figure named for what it measures. GPU figures come only from
    torch.cuda; on CPU the host's resident memory and the profiler's tensor bytes."""

    device: str
    device_name: str
    current_gpu_allocated_bytes: int | None = None
    current_gpu_reserved_bytes: int | None = None
    peak_gpu_allocated_bytes: int | None = None
    peak_gpu_reserved_bytes: int | None = None
    gpu_total_bytes: int | None = None
    peak_host_rss_bytes: int | None = Field(
        None, description="CPU runs: peak resident memory of the worker process (host, not GPU)"
    )
    predicted_peak_bytes: int | None = Field(
        None, description="What the planner predicted for this device before the job ran"
    )
    prediction_error: float | None = Field(None, description="(predicted - measured) / measured")
    peak_step_tensor_bytes: int | None = Field(
        None,
        description="Peak tensor bytes of the first training step (parameters, optimiser "
        "state, gradients, activations), from the PyTorch profiler with profile_memory=True",
    )
    note: str


class BestCheckpoint(BaseModel):
    """The step whose model scored best (docs/quality.md), kept as final/best.pt."""

    step: int
    metric: str = Field(description="fd or fid (lower is better), or test_accuracy (higher)")
    value: float
    path: str = Field("final/best.pt", description="Relative to the job's artifacts")


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
    speed: list[str] = Field(
        default_factory=list,
        description="Opt-in speed flags in effect: amp, channels_last, compile",
    )
    best: BestCheckpoint | None = Field(None, description="Absent when nothing was scored")
    quality_note: str | None = Field(
        None, description="Why sample quality was not measured, when it was not"
    )
    warnings: list[HealthWarning] = Field(default_factory=list)
    memory: MemoryReport


# --- Data sets.


class DatasetPublic(BaseModel):
    """An uploaded data set, stored canonically as datasets/{id}/data.npz."""

    id: str
    owner: str | None = None
    name: str | None = None
    format: str = Field(description="what was uploaded: idx, npz or zip")
    image: Annotated[tuple[int, int, int], _fixed_array(3, {"type": "integer", "minimum": 1})] = (
        Field(description="(channels, height, width)")
    )
    num_images: int
    num_classes: int = Field(description="0 when the images have no labels")
    classes: list[str]
    size_bytes: int
    created_at: datetime


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int


# --- Health.


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str]


class ErrorBody(BaseModel):
    code: str = Field(description="Stable, machine-readable: not_found, validation_error, ...")
    message: str = Field(description="One line for people")
    field: str | None = Field(None, description="The request field at fault, when there is one")
    details: list[dict[str, Any]] | None = Field(None, description="Every problem, for 422s")


class ErrorResponse(BaseModel):
    """The one shape of every 4xx and 5xx answer."""

    error: ErrorBody


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
