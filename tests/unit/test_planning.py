"""Memory planning: the envelope maths, class choice, and the prediction against the profiler's
measurement of the same step, for every model in the zoo at three batch sizes."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from celery import Celery
from redis import Redis

from services.api.planner import ApiPlanner
from shared.config import Settings
from shared.planning import (
    Line,
    NoClassFits,
    choose_class,
    parse_classes,
    peak_at,
    plan_key,
    plan_shape,
    predict,
    upper_envelope,
)
from shared.schemas import JobSpecAdapter
from shared.state.heartbeats import WorkerRegistry
from shared.state.jobs import JobRegistry
from shared.state.plans import PlanCache
from workers.trainer.memory import profile_tensor_peak
from workers.trainer.probe import _synthetic, probe
from workers.trainer.recipes import make_recipe


def test_upper_envelope_matches_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(300):
        lines = [
            Line(a=rng.uniform(-1e6, 1e6), b=rng.uniform(0, 1e4)) for _ in range(rng.randint(1, 40))
        ]
        hull = upper_envelope(lines)
        assert len(hull) <= len(lines)
        for n in (2, 3, 7, 64, 1000, 10**6):
            assert peak_at(hull, n) == pytest.approx(peak_at(lines, n))


CLASSES = parse_classes("cpu:16,gpu-16g:16,gpu-80g:80")
G = 1024**3


@pytest.mark.parametrize(
    ("device", "cpu_gib", "gpu_gib", "online", "expect", "says"),
    [
        ("auto", 1, 1, {"gpu-16g", "gpu-80g"}, "gpu-16g", "fits gpu-16g"),
        ("auto", 1, 30, {"gpu-16g", "gpu-80g"}, "gpu-80g", "fits gpu-80g"),
        ("auto", 1, 30, {"gpu-16g"}, "gpu-80g", "no worker of that class is online"),
        ("auto", 1, 1, {"cpu"}, "cpu", "fits cpu"),  # no GPU online: the CPU class can hold it
        ("cpu", 1, 1, {"gpu-16g"}, "cpu", "no worker"),
        ("cuda", 1, 1, {"cpu"}, "gpu-16g", "no worker"),
        (
            "auto",
            100,
            90,
            {"gpu-80g"},
            None,
            "needs 90.00 GiB, largest class is gpu-80g with 80 GiB",
        ),
        ("cpu", 20, 1, {"cpu"}, None, "needs 20.00 GiB, largest class is cpu with 16 GiB"),
    ],
)
def test_choose_class(
    device: str, cpu_gib: float, gpu_gib: float, online: set[str], expect: str | None, says: str
) -> None:
    klass, why = choose_class(CLASSES, online, device, int(cpu_gib * G), int(gpu_gib * G), 0.9)
    assert (klass.name if klass else None) == expect and says in why, why


ZOO: list[tuple[dict[str, Any], tuple[int, int, int], tuple[int, int, int]]] = [
    ({"task": "classifier", "model": "book_cnn"}, (1, 28, 28), (1, 16, 64)),
    ({"task": "classifier", "model": "book_mlp"}, (1, 28, 28), (1, 16, 64)),
    ({"task": "gan", "model": "conv_gan"}, (1, 28, 28), (1, 16, 64)),
    ({"task": "gan", "model": "conv_gan", "resize": 32}, (3, 32, 32), (1, 8, 32)),
    ({"task": "cgan", "model": "conv_cgan"}, (1, 28, 28), (1, 16, 64)),
    ({"task": "cgan", "model": "book_cgan"}, (1, 28, 28), (1, 16, 64)),
    ({"task": "gan", "model": "book_conv_gan", "resize": 128}, (1, 28, 28), (1, 4, 8)),
    ({"task": "gan", "model": "book_mlp_gan", "resize": [218, 178]}, (1, 28, 28), (1, 8, 24)),
]


def _measure(body: dict[str, Any], image: tuple[int, int, int], batch: int) -> int:
    torch.manual_seed(0)
    spec = JobSpecAdapter.validate_python({**body, "batch_size": batch})
    data = _synthetic(image, 10, batch)
    recipe = make_recipe(spec, data, torch.device("cpu"))
    out: dict[str, int] = {}
    with profile_tensor_peak(recipe.state_dict().values(), out):
        recipe.train_step(data.train_x, recipe.train_labels)
    return out["peak_step_tensor_bytes"]


@pytest.mark.parametrize(
    ("body", "image", "batches"), ZOO, ids=lambda v: v.get("model") if isinstance(v, dict) else None
)
def test_prediction_within_10_percent_of_the_measured_step(
    body: dict[str, Any], image: tuple[int, int, int], batches: tuple[int, int, int]
) -> None:
    result = probe(JobSpecAdapter.validate_python(body), image, 10)
    for batch in batches:
        predicted_cpu, predicted_gpu = predict(result, batch)
        measured = _measure(body, image, batch)
        error = (predicted_cpu - measured) / measured
        print(
            f"{body['model']} batch {batch}: predicted {predicted_cpu:,} measured {measured:,} "
            f"({error:+.1%})"
        )
        assert abs(error) <= 0.10, (batch, predicted_cpu, measured)
        assert predicted_gpu >= 0.99 * predicted_cpu  # 512-byte blocks only round up


def test_specs_with_the_same_effective_shape_share_one_plan_key() -> None:
    def key(body: dict[str, Any], image: tuple[int, int, int] = (1, 28, 28)) -> str:
        return plan_key(JobSpecAdapter.validate_python(body), image, 10)

    gan = {"task": "gan", "model": "conv_gan"}
    # No-op crops (any side >= the image's) and a resize to the size it has: all "28x28 grey".
    same = {key(gan | extra) for extra in ({}, {"crop": 100}, {"crop": [200, 999]}, {"crop": 28})}
    same.add(key(gan | {"resize": 28}))
    assert len(same) == 1
    # A crop then a resize to the same size is one shape, whatever the crop.
    assert key(gan | {"crop": 20, "resize": 32}) == key(gan | {"crop": 24, "resize": 32})
    # What changes a step's memory changes the key.
    others = [
        key(gan | {"resize": 32}),
        key(gan | {"mode": "book"}),
        key(gan, (3, 28, 28)),
        key(gan | {"crop": 20, "resize": 28}, (1, 56, 56)),
        key({"task": "cgan", "model": "conv_cgan"}),
        key({"task": "classifier", "model": "book_cnn"}),
    ]
    assert len(set(others) | same) == len(others) + 1
    # Labels count only where the model uses them.
    spec = JobSpecAdapter.validate_python(gan)
    assert plan_key(spec, (1, 28, 28), 10) == plan_key(spec, (1, 28, 28), 0)


def test_the_canonical_probe_predicts_the_cropped_and_resized_step() -> None:
    """One probe serves every spec of a PlanShape: it runs without the crop, resizing to the
    effective size; its prediction still matches the real (cropped) step."""
    body = {"task": "gan", "model": "conv_gan", "crop": 20, "resize": 32}
    shape = plan_shape(JobSpecAdapter.validate_python(body), (1, 28, 28), 10)
    assert shape.spec.crop is None and shape.effective == (1, 32, 32)
    result = probe(shape.spec, shape.image, shape.classes)
    for batch in (1, 8, 32):
        predicted = predict(result, batch)[0]
        measured = _measure(body, (1, 28, 28), batch)
        assert abs(predicted - measured) / measured <= 0.10, (batch, predicted, measured)


def test_a_device_no_class_serves_is_refused_before_any_probe() -> None:
    settings = Settings(_env_file=None, MEMORY_CLASSES="cpu:16")
    redis = Redis(port=1)  # never connected: nothing here may need Redis or a planner
    cache = PlanCache(redis, "trainyard", 60)
    planner = ApiPlanner(JobRegistry(redis), cache, Celery(), settings, WorkerRegistry(redis))
    cuda = JobSpecAdapter.validate_python({"task": "classifier", "device": "cuda"})
    with pytest.raises(NoClassFits) as info:
        planner.check_possible(cuda)
    assert info.value.field == "device"
    assert info.value.message == "device: no memory class serves device 'cuda'"
    planner.check_possible(JobSpecAdapter.validate_python({"task": "classifier"}))  # fine
