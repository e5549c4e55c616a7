"""Memory planning, the probe: measure one training step's allocations on the CPU at two tiny
batch sizes and turn them into lines (shared/planning.py) that predict any batch size.

The probe runs the pipeline's own recipe step (the same code the worker trains with) on
synthetic images of the job's shape, under the PyTorch profiler with profile_memory=True."""

from __future__ import annotations

import math
import time

import torch
from torch.profiler import ProfilerActivity, profile

from shared.planning import Line, ProbeResult, upper_envelope
from shared.schemas import JobSpec
from workers.trainer.data import ImageData
from workers.trainer.memory import no_gc, tensor_bytes
from workers.trainer.recipes import make_recipe
from workers.trainer.speed import plain

PROBE_BATCHES = (2, 3)
CUDA_BLOCK = 512  # the caching allocator rounds every block up to a multiple of 512 bytes


def _synthetic(image: tuple[int, int, int], num_classes: int, n: int) -> ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, *image), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % max(num_classes, 1)
    return ImageData("probe", x, y, x, y, [str(i) for i in range(max(num_classes, 1))])


def timeline(
    spec: JobSpec, image: tuple[int, int, int], num_classes: int, batch: int
) -> tuple[list[int], list[int]]:
    """Live tensor bytes after each allocation or free of one fresh training step, as the
    host measures them and as CUDA's allocator would round them. Starts from the state alive
    before the step (parameters, buffers).

    The step is the plain float32 eager one, whatever the spec's speed flags (amp,
    channels_last, compile): plan_key does not tell them apart, so one cached probe serves
    every setting, and compiling would cost the planner tens of seconds per probe."""
    torch.manual_seed(0)
    spec = plain(spec).model_copy(update={"batch_size": batch})
    data = _synthetic(image, num_classes, batch)
    recipe = make_recipe(spec, data, torch.device("cpu"))
    base = tensor_bytes(recipe.state_dict().values())
    with no_gc(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        recipe.train_step(data.train_x, recipe.train_labels)
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    raw, rounded = [base], [_round(base)]
    for event in events:
        size = event.nbytes()
        raw.append(raw[-1] + size)
        rounded.append(rounded[-1] + int(math.copysign(_round(abs(size)), size)))
    return raw, rounded


def _round(n: int) -> int:
    return -(-n // CUDA_BLOCK) * CUDA_BLOCK


def probe(spec: JobSpec, image: tuple[int, int, int], num_classes: int) -> ProbeResult:
    """Measure at batch 1, 2 and 3; lines through each allocation point at 2 and 3."""
    started = time.perf_counter()
    one = timeline(spec, image, num_classes, 1)
    (raw2, gpu2), (raw3, gpu3) = (timeline(spec, image, num_classes, b) for b in PROBE_BATCHES)
    if len(raw2) != len(raw3):  # the allocation sequence changed with the batch: use the peaks
        raw2, raw3, gpu2, gpu3 = [max(raw2)], [max(raw3)], [max(gpu2)], [max(gpu3)]

    def lines(at2: list[int], at3: list[int]) -> list[Line]:
        pairs = zip(at2, at3, strict=True)
        return upper_envelope([Line(a=y2 - 2 * (y3 - y2), b=y3 - y2) for y2, y3 in pairs])

    return ProbeResult(
        cpu=lines(raw2, raw3),
        gpu=lines(gpu2, gpu3),
        at_batch_1=(max(one[0]), max(one[1])),
        probe_s=round(time.perf_counter() - started, 3),
    )
