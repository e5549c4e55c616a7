"""Memory planning, the torch-free half: memory classes, routing, and evaluating a predicted
peak for any batch size from the lines a CPU probe measured (workers/trainer/planner.py).

A probe runs one training step at two small batch sizes under the PyTorch profiler. The live
bytes after each allocation are affine in the batch size (the same ops allocate in the same
order; activation sizes scale with the batch), so each allocation point gives a line
bytes = a + b * batch, and the peak for batch N is the highest line at N. Only the upper
envelope of those lines is kept: a handful of (a, b) pairs per model and data shape."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from dataclasses import dataclass

from celery import Celery
from pydantic import BaseModel, Field
from redis import Redis

from shared.config import Settings
from shared.jobs import RedisKeys
from shared.schemas import JobSpec
from shared.workers import WorkerRegistry

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
    """(cpu, gpu) predicted peak tensor bytes of one training step at `batch`."""
    if batch == 1:
        return int(probe.at_batch_1[0]), int(probe.at_batch_1[1])
    return int(peak_at(probe.cpu, batch)), int(peak_at(probe.gpu, batch))


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


def plan_key(spec: JobSpec, image: tuple[int, int, int], num_classes: int) -> str:
    """What the memory of a step depends on: model, task, mode, transforms, data shape."""
    relevant = {
        "task": spec.task,
        "model": spec.model,
        "mode": spec.mode,
        "crop": spec.crop,
        "resize": spec.resize,
        "image": image,
        "classes": num_classes,
        "activation": getattr(spec, "activation", None),
        "version": 1,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:24]


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
    allowed = [c for c in classes if (device != "cpu" or not c.gpu) and (device != "cuda" or c.gpu)]
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
    """Where a job goes, and what the planner predicted for it."""

    memory_class: str | None
    queue: str | None
    reason: str
    cpu_bytes: int | None = None
    gpu_bytes: int | None = None


class NoClassFits(ValueError):
    pass


class Planner:
    """The API's side: find (or ask a planner worker for) the probe of a job's model and data
    shape, predict its peak at its batch size, and pick a memory class. Torch-free."""

    def __init__(
        self, redis: Redis, celery: Celery, settings: Settings, workers: WorkerRegistry
    ) -> None:
        self.redis, self.celery, self.settings, self.workers = redis, celery, settings, workers
        self.keys = RedisKeys(settings.KEY_PREFIX)
        self.classes = parse_classes(settings.MEMORY_CLASSES)
        # A probe never changes for its key (model + data shape): parsed once per process.
        self._parsed: dict[str, ProbeResult] = {}

    def probe(
        self,
        spec: JobSpec,
        image: tuple[int, int, int],
        num_classes: int,
    ) -> ProbeResult | None:
        """The cached probe, or a fresh one from a planner worker (None if none answers)."""
        key = plan_key(spec, image, num_classes)
        if key in self._parsed:
            return self._parsed[key]
        cached = self.redis.get(self.keys.plan_cache(key))
        if cached is not None:
            if len(self._parsed) >= 1024:
                self._parsed.clear()
            self._parsed[key] = ProbeResult.model_validate_json(cached)
            return self._parsed[key]
        if self.settings.PLAN_TIMEOUT_S <= 0:
            return None
        reply = self.keys.plan_reply(uuid.uuid4().hex)
        self.celery.send_task(
            PLAN_TASK,
            args=[key, spec.model_dump(mode="json"), list(image), num_classes, reply],
            queue=plan_queue(self.settings.QUEUE),
        )
        answer = self.redis.blpop([reply], timeout=self.settings.PLAN_TIMEOUT_S)
        return ProbeResult.model_validate_json(answer[1]) if answer else None

    def route(self, spec: JobSpec, image: tuple[int, int, int], num_classes: int) -> Routing:
        """Predict and pick a class; NoClassFits (with the numbers) if none can hold the job."""
        found = self.probe(spec, image, num_classes)
        return self._route(spec, found, {w.memory_class for w in self.workers.online()})

    async def aroute(self, spec: JobSpec, image: tuple[int, int, int], num_classes: int) -> Routing:
        """route() for the API's event loop: no thread when the probe is already parsed here
        (every job after a model's first); otherwise route() in a thread, as it may wait for a
        planner worker."""
        found = self._parsed.get(plan_key(spec, image, num_classes))
        if found is None:
            return await asyncio.to_thread(self.route, spec, image, num_classes)
        return self._route(spec, found, {w.memory_class for w in await self.workers.aonline()})

    def _route(self, spec: JobSpec, found: ProbeResult | None, online: set[str]) -> Routing:
        default = queue_for("cpu", self.settings.QUEUE)
        if found is None:  # no planner answered: run unplanned on the default queue
            return Routing(
                memory_class=None,
                queue=default,
                reason="memory not predicted: no planner answered in time",
            )
        micro = spec.batch_size
        cpu_bytes, gpu_bytes = predict(found, micro)
        klass, why = choose_class(
            self.classes, online, spec.device, cpu_bytes, gpu_bytes, self.settings.MEMORY_HEADROOM
        )
        if klass is None:
            raise NoClassFits(why)
        return Routing(
            memory_class=klass.name,
            queue=queue_for(klass.name, self.settings.QUEUE),
            reason=why,
            cpu_bytes=cpu_bytes,
            gpu_bytes=gpu_bytes,
        )
