"""What scoring GAN samples costs beside training (docs/quality.md): one quality score vs one
training step of the same job, in the same process, and the share of a default job's time the
scores take. On CUDA, also the peak GPU memory a score adds.

    python -m bench.quality_cost                                  # conv_gan on mnist-5k
    python -m bench.quality_cost --model book_conv_gan --dataset fake --resize 128 --batch 1

The reference classifier is trained (or loaded) before timing: it is a one-off per data set."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from shared.config import Settings
from shared.schemas import JobSpecAdapter
from shared.storage import LocalArtifactStore
from workers.trainer import quality
from workers.trainer.data import load_dataset
from workers.trainer.memory import pick_device
from workers.trainer.recipes import GanRecipe, make_recipe


def timed(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    """Median seconds of `fn` over `repeat` calls, CUDA synchronised."""
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="conv_gan")
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--resize", type=int, default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--samples", type=int, default=1000, help="TRAINYARD_QUALITY_SAMPLES")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    raw = {"task": "gan", "model": args.model, "dataset": args.dataset}
    if args.resize:
        raw["resize"] = args.resize
    if args.model == "book_conv_gan" and args.batch == 1:
        raw["mode"] = "book"
    else:
        raw["batch_size"] = args.batch
    spec = JobSpecAdapter.validate_python(raw)
    device = pick_device(spec.device)
    data = load_dataset(spec.dataset).to(device)
    recipe = make_recipe(spec, data, device)
    assert isinstance(recipe, GanRecipe)
    with tempfile.TemporaryDirectory() as root:
        settings = Settings(QUALITY_SAMPLES=args.samples, DATA_DIR=root)
        store = LocalArtifactStore(root)
        meter = quality.meter_for(
            data, recipe.prepare, recipe.classes > 0, store, settings, device, spec.seed
        )
    x, y = data.train_x[: spec.batch_size], recipe.train_labels[: spec.batch_size]
    recipe.train_step(x, y)  # warm-up
    meter.score(recipe.generate)
    step_s = timed(lambda: recipe.train_step(x, y), device, args.repeat * 4)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.max_memory_allocated()
    score_s = timed(lambda: meter.score(recipe.generate), device, args.repeat)
    steps_per_epoch = -(-len(data.train_x) // spec.batch_size)
    total = spec.epochs * steps_per_epoch
    scores = total // spec.sample_every + 1
    share = scores * score_s / (total * step_s + scores * score_s)
    print(
        f"{spec.model} on {spec.dataset} ({device}), batch {spec.batch_size}, "
        f"{len(meter.z)} samples"
    )
    print(f"training step: {step_s * 1000:.1f} ms; one quality score: {score_s * 1000:.1f} ms")
    print(f"a score costs {score_s / step_s:.1f} training steps")
    print(
        f"default job: {total} steps, {scores} scores -> scoring is {share:.2%} of its time "
        f"(ratio with scores / without: {1 / (1 - share):.4f})"
    )
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        added = (peak - before) / 2**20
        print(f"peak GPU allocated during scoring: {peak / 2**20:.1f} MiB (+{added:.1f} MiB)")


if __name__ == "__main__":
    main()
