"""Memory planning, the torch-free half: memory classes, routing, and evaluating a predicted
peak for any batch size from the lines a CPU probe measured (workers/trainer/probe.py).

A probe runs one training step at two small batch sizes under the PyTorch profiler. The live
bytes after each allocation are affine in the batch size (the same ops allocate in the same
order; activation sizes scale with the batch), so each allocation point gives a line
bytes = a + b * batch, and the peak for batch N is the highest line at N. Only the upper
envelope of those lines is kept: a handful of (a, b) pairs per model and data shape."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from celery import Celery
from pydantic import BaseModel, Field

from shared.broker import enqueue_training
from shared.config import Settings
from shared.schemas import JobSpec
from shared.state.heartbeats import WorkerRegistry
from shared.state.jobs import JobRegistry
from shared.state.plans import PlanCache
from shared.state.records import status_event
from shared.status import JobStatus
from shared.zoo import MODELS, transformed_shape

GIB = 1024**3


class Line(BaseModel):
    a: float  # bytes at batch 0
    b: float  # bytes per image


class ProbeResult(BaseModel):
    """What a probe measured for one model + data shape (cached in Redis by plan_key)."""

    cpu: list[Line] = Field(description="upper envelope: host tensor bytes, as measured")
    gpu: list[Line] = Field(
        description="the same allocations rounded up to the CUDA caching "
        "allocator's 512-byte blocks"
    )
    at_batch_1: tuple[float, float] = Field(description="(cpu, gpu) peak measured at batch 1")
    probe_s: float


def peak_at(lines: list[Line], batch: int) -> float:
    return max(line.a + line.b * batch for line in lines)


def predict(probe: ProbeResult, batch: int) -> tuple[int, int]:
    """(cpu, gpu) predicted peak tensor bytes of one training step at `batch`. The GPU figure
    is never below the host one: rounding to blocks only adds (the rounded lines, fitted at
    small batches, can extrapolate a little under the raw ones)."""
    if batch == 1:
        cpu, gpu = probe.at_batch_1
    else:
        cpu, gpu = peak_at(probe.cpu, batch), peak_at(probe.gpu, batch)
    return int(cpu), int(max(cpu, gpu))


def upper_envelope(lines: list[Line], start: float = 2.0) -> list[Line]:
    """The lines that are the maximum somewhere on [start, inf): the convex-hull trick."""
    best: dict[float, Line] = {}
    for line in lines:  # one line per slope: the highest
        if line.b not in best or line.a > best[line.b].a:
            best[line.b] = line
    hull: list[Line] = []
    for line in sorted(best.values(), key=lambda ln: ln.b):
        while hull:
            top = hull[-1]
            # `top` is useless if `line` already beats it at the start or where top would begin
            x = (top.a - line.a) / (line.b - top.b)  # where line overtakes top
            begins = (
                start if len(hull) == 1 else max(start, (hull[-2].a - top.a) / (top.b - hull[-2].b))
            )
            if x <= begins:
                hull.pop()
            else:
                break
        hull.append(line)
    return hull


Shape = tuple[int, int, int]  # (C, H, W)


@dataclass(frozen=True)
class PlanShape:
    """What the memory of one training step depends on, and nothing else: the model (task,
    model, mode, activation), the stored image shape a batch arrives in, the effective shape
    the model takes (after crop, resize and grey->RGB) and the label count a model uses.
    Specs with the same PlanShape share one probe: `crop: 100` and `crop: 200` on 28x28
    images are both no crop.

    `spec` is the canonical spec the probe runs: no crop, and a resize to the effective
    size when it differs from the stored one (a centre crop is a view; the resize is the
    step's first allocation of the effective size either way)."""

    spec: JobSpec
    image: Shape
    effective: Shape
    classes: int

    @property
    def key(self) -> str:
        relevant = {
            "task": self.spec.task,
            "model": self.spec.model,
            "mode": self.spec.mode,
            "activation": getattr(self.spec, "activation", None),
            "image": self.image,
            "effective": self.effective,
            "classes": self.classes,
            "version": 2,
        }
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:24]


def plan_shape(spec: JobSpec, image: Shape, num_classes: int) -> PlanShape:
    """The PlanShape of `spec` on a data set of `image` (C, H, W) with `num_classes` labels."""
    model = MODELS[spec.model]
    effective = transformed_shape(
        image, spec.crop_hw(), spec.resize_hw(), model.image[0] if model.image else None
    )
    resize = None if effective[1:] == image[1:] else effective[1:]
    canonical = spec.model_copy(update={"crop": None, "resize": resize})
    return PlanShape(canonical, image, effective, 0 if spec.task == "gan" else num_classes)


def plan_key(spec: JobSpec, image: Shape, num_classes: int) -> str:
    """The plan cache key of `spec` on this data shape (see PlanShape)."""
    return plan_shape(spec, image, num_classes).key


@dataclass(frozen=True)
class MemoryClass:
    name: str
    gib: float
    gpu: bool

    @property
    def bytes(self) -> int:
        return int(self.gib * GIB)


def parse_classes(text: str) -> list[MemoryClass]:
    """ "cpu:16,gpu-16g:16,gpu-80g:80" -> classes, smallest first; "cpu..." names are CPU."""
    found = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, gib = item.partition(":")
        found.append(MemoryClass(name, float(gib), not name.startswith("cpu")))
    return sorted(found, key=lambda c: (c.gpu, c.gib))


def queue_for(klass: str, default_queue: str) -> str:
    """The Celery queue of a memory class; the cpu class keeps the default queue."""
    return default_queue if klass == "cpu" else f"{default_queue}.{klass}"


def serving(classes: list[MemoryClass], device: str) -> list[MemoryClass]:
    """The classes that can run a job asking for `device` ("auto", "cpu" or "cuda")."""
    return [c for c in classes if (device != "cpu" or not c.gpu) and (device != "cuda" or c.gpu)]


def choose_class(
    classes: list[MemoryClass],
    online: set[str],
    device: str,
    cpu_bytes: int,
    gpu_bytes: int,
    headroom: float,
) -> tuple[MemoryClass | None, str]:
    """The smallest class that fits (online ones first) and why; None with the numbers when
    no configured class can hold the job."""
    allowed = serving(classes, device)
    # GPU classes first for "auto": that is where a job runs fastest.
    allowed.sort(key=lambda c: (not c.gpu, c.gib))

    def need(c: MemoryClass) -> int:
        return gpu_bytes if c.gpu else cpu_bytes

    fitting = [c for c in allowed if need(c) <= c.bytes * headroom]
    for c in fitting:
        if c.name in online:
            return c, f"fits {c.name} ({need(c) / GIB:.2f} of {c.gib:g} GiB)"
    if fitting:
        return fitting[0], f"fits {fitting[0].name}, but no worker of that class is online"
    if not allowed:
        return None, f"no memory class serves device {device!r}"
    largest = max(allowed, key=lambda c: c.gib)
    return None, (
        f"needs {need(largest) / GIB:.2f} GiB, largest class is {largest.name} "
        f"with {largest.gib:g} GiB ({headroom:.0%} usable)"
    )


PLAN_TASK = "trainyard.plan_memory"


def all_queues(settings: Settings) -> list[str]:
    """Every training queue: the default (cpu class) and one per configured class."""
    names = [queue_for(c.name, settings.QUEUE) for c in parse_classes(settings.MEMORY_CLASSES)]
    return sorted({settings.QUEUE, *names})


def plan_queue(default_queue: str) -> str:
    return f"{default_queue}.plan"


class Routing(BaseModel):
    """Where a job goes, and what the planner predicted for it; or, with `planning` set, that
    its probe is still running: the job is stored without a queue message and settle()
    routes it (or fails it) when the probe ends."""

    memory_class: str | None
    queue: str | None
    reason: str
    cpu_bytes: int | None = None
    gpu_bytes: int | None = None
    planning: str | None = None  # the plan key the job waits on


class NoClassFits(ValueError):
    """No configured memory class can run the job. `field` is the spec field to change;
    `message` is what the 422 says and what a job that waited for its probe fails with."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(why)
        self.field = field

    @property
    def message(self) -> str:
        return f"{self.field}: {self}"


class ProbeRateLimited(RuntimeError):
    """The owner asked for more new probes than PLAN_PROBES_PER_MINUTE (a 429)."""

    def __init__(self, owner: str, limit: int, retry_after_s: int) -> None:
        super().__init__(
            f"{owner} asked for more than {limit} memory probes of new model/data shapes in a "
            f"minute (TRAINYARD_PLAN_PROBES_PER_MINUTE); retry in {retry_after_s} s, or reuse "
            "a shape already planned"
        )
        self.retry_after_s = retry_after_s


UNPLANNED = "memory not predicted: no planner answered in time"


class Planner:
    """The probe of a job's model and data shape (cached), its predicted peak at its batch
    size, the memory class that holds it; and settling the jobs that were accepted while
    their probe ran (settle(): the planner worker calls it when the probe ends). Torch-free.
    The API's side (waiting for a probe at submit time) is services/api/planner.py."""

    def __init__(
        self,
        registry: JobRegistry,
        cache: PlanCache,
        celery: Celery,
        settings: Settings,
        workers: WorkerRegistry,
    ) -> None:
        self.registry, self.cache, self.celery = registry, cache, celery
        self.settings, self.workers = settings, workers
        self.classes = parse_classes(settings.MEMORY_CLASSES)
        # A probe never changes for its key (model + data shape): parsed once per process.
        self._parsed: dict[str, ProbeResult] = {}

    # --- the cache (PLAN_CACHE_TTL_S)

    def cached(self, key: str) -> ProbeResult | None:
        """The probe of `key`, if one is cached."""
        if key in self._parsed:
            return self._parsed[key]
        raw = self.cache.get(key)
        return None if raw is None else self._remember(key, raw)

    def store(self, key: str, found: ProbeResult) -> None:
        """Cache a probe for PLAN_CACHE_TTL_S."""
        self.cache.put(key, found.model_dump_json())

    def _remember(self, key: str, raw: bytes | str) -> ProbeResult:
        if len(self._parsed) >= 1024:
            self._parsed.clear()
        self._parsed[key] = ProbeResult.model_validate_json(raw)
        return self._parsed[key]

    # --- routing

    def route_with(
        self,
        spec: JobSpec,
        found: ProbeResult | None,
        online: set[str],
        unplanned: str = UNPLANNED,
    ) -> Routing:
        """Predict and pick a class; NoClassFits (with the numbers) if none can hold the job.
        Without a probe: the default queue, unplanned (`unplanned` says why)."""
        if found is None:
            default = queue_for("cpu", self.settings.QUEUE)
            return Routing(memory_class=None, queue=default, reason=unplanned)
        cpu_bytes, gpu_bytes = predict(found, spec.batch_size)
        klass, why = choose_class(
            self.classes, online, spec.device, cpu_bytes, gpu_bytes, self.settings.MEMORY_HEADROOM
        )
        if klass is None:
            raise NoClassFits("batch_size" if serving(self.classes, spec.device) else "device", why)
        return Routing(
            memory_class=klass.name,
            queue=queue_for(klass.name, self.settings.QUEUE),
            reason=why,
            cpu_bytes=cpu_bytes,
            gpu_bytes=gpu_bytes,
        )

    # --- settling the jobs that waited for a probe (planner worker, API, reconciler)

    def settle(
        self, key: str, found: ProbeResult | None, unplanned: str = UNPLANNED
    ) -> dict[str, str]:
        """Route (or fail) every job waiting on `key`'s probe; `found` None routes them
        unplanned. Returns {job id: "routed" | "failed"} for the jobs this call settled."""
        ids = self.cache.waiting(key)
        if not ids:
            return {}
        online = {w.memory_class for w in self.workers.online()}
        done = {}
        for job_id in ids:
            outcome = self.settle_job(job_id, key, found, online, unplanned)
            if outcome is not None:
                done[job_id] = outcome
        self.cache.done_waiting(key, ids)
        return done

    def settle_job(
        self,
        job_id: str,
        key: str,
        found: ProbeResult | None,
        online: set[str] | None = None,
        unplanned: str = UNPLANNED,
    ) -> str | None:
        """Route the job if it is still queued waiting on `key`: its class's queue, then its
        message (if this process dies in between, the reconciler re-sends it); or fail it
        with NoClassFits's message. A status event records either. None when another
        process settled it first, or it was cancelled."""
        try:
            job = self.registry.get(job_id)
        except KeyError:
            return None
        if job.status is not JobStatus.QUEUED or job.planning != key:
            return None
        if online is None:
            online = {w.memory_class for w in self.workers.online()}
        try:
            routing = self.route_with(job.spec, found, online, unplanned)
        except NoClassFits as exc:
            event = status_event(reason=exc.message)
            failed = JobStatus.FAILED
            settled = self.registry.settle_planned(job_id, key, failed, event, error=exc.message)
            return "failed" if settled else None
        queue = routing.queue or self.settings.QUEUE
        fields = {
            "queue": queue,
            "memory_class": routing.memory_class,
            "predicted_peak_cpu_bytes": routing.cpu_bytes,
            "predicted_peak_gpu_bytes": routing.gpu_bytes,
        }
        routed = {k: v for k, v in fields.items() if v is not None}
        event = status_event(reason=f"planned: {routing.reason}")
        if not self.registry.settle_planned(job_id, key, JobStatus.QUEUED, event, **routed):
            return None
        enqueue_training(self.celery, job_id, queue)
        return "routed"
