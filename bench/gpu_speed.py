"""The GPU check of issue 9, one script: fast-mode book_cnn on the full MNIST size (60,000
training images, made from mnist-5k's 4,000 by random shifts) — images/s and seconds per
epoch; book_conv_gan at batch 1 (the book's recipe) and batch 64 — steps/s and the peak
memory of training vs the book's 0.2036 GB. Fast-mode runs are repeated with each of
`--speed`'s flag sets (default: none, then amp + channels_last), so the opt-in flags are
measured on the GPU the day one is lent.

    python -m bench.gpu_speed                 # needs CUDA (exit 2 without it)
    python -m bench.gpu_speed --device cpu --images 640 --gan-steps 1 --gan-batches 1  # smoke

The steps are the pipeline's own (make_recipe, Batches), on data preloaded on the device.
On CUDA, peak memory is torch.cuda.max_memory_allocated() over the timed steps; on CPU no
peak is printed (host memory is not GPU memory)."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from shared.schemas import JobSpecAdapter
from workers.trainer.data import Batches, ImageData, load_dataset
from workers.trainer.probe import _synthetic
from workers.trainer.recipes import make_recipe

BOOK_CONV_GAN_PEAK_GB = 0.2036  # the book's ch. 3 §3.1.1, Tesla T4, batch 1 (docs/book.md)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def mnist_sized(n: int, seed: int = 0) -> ImageData:
    """n training images: mnist-5k's, each shifted by up to 2 pixels (same labels)."""
    base = load_dataset("mnist-5k")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, len(base.train_x), (n,), generator=g)
    x, y = base.train_x[pick].clone(), base.train_y[pick]
    shifts = torch.randint(-2, 3, (n, 2), generator=g)
    for dy, dx in shifts.unique(dim=0).tolist():
        rows = ((shifts[:, 0] == dy) & (shifts[:, 1] == dx)).nonzero().squeeze(1)
        x[rows] = torch.roll(x[rows], shifts=(dy, dx), dims=(2, 3))
    return ImageData("mnist-60k", x, y, base.test_x, base.test_y, base.classes)


def flag_sets(text: str) -> list[dict[str, bool]]:
    """ "none,amp+channels_last" -> [{}, {"amp": True, "channels_last": True}]"""
    return [
        {} if part == "none" else dict.fromkeys(part.split("+"), True) for part in text.split(",")
    ]


def label(flags: dict[str, bool]) -> str:
    return " + ".join(flags) if flags else "no flags"


def classifier(device: torch.device, images: int, epochs: int, flags: dict[str, bool]) -> None:
    data = mnist_sized(images).to(device)
    spec = JobSpecAdapter.validate_python({"task": "classifier", "model": "book_cnn", **flags})
    torch.manual_seed(0)
    recipe = make_recipe(spec, data, device)
    batches = Batches(data.train_x, data.train_y, spec.batch_size, seed=0)
    for x, y in list(batches.epoch(99))[:5]:  # warm-up: kernels, allocator
        recipe.train_step(x, y)
    for epoch in range(epochs):
        sync(device)
        started = time.perf_counter()
        for x, y in batches.epoch(epoch):
            recipe.train_step(x, y)
        sync(device)
        took = time.perf_counter() - started
        accuracy = recipe.evaluate()["test_accuracy"]
        print(
            f"book_cnn fast (batch {spec.batch_size}, {label(flags)}), {images:,} images, "
            f"epoch {epoch + 1}: "
            f"{took:6.2f} s/epoch  {images / took:>10,.0f} images/s  held-out acc {accuracy:.4f}"
        )


def conv_gan(device: torch.device, batch: int, steps: int, flags: dict[str, bool]) -> None:
    mode = "book" if batch == 1 else "fast"
    body = {"task": "gan", "model": "book_conv_gan", "mode": mode, "crop": 128, **flags}
    spec = JobSpecAdapter.validate_python({**body, "batch_size": batch})
    data = _synthetic((3, 218, 178), 1, batch * (steps + 5)).to(device)
    torch.manual_seed(0)
    recipe = make_recipe(spec, data, device)
    batches = list(Batches(data.train_x, data.train_y, batch, seed=0).epoch(0))
    for x, y in batches[:5]:
        recipe.train_step(x, y)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for x, y in batches[5 : 5 + steps]:
        recipe.train_step(x, y)
    sync(device)
    rate = steps / (time.perf_counter() - started)
    peak = ""
    if device.type == "cuda":
        gb = torch.cuda.max_memory_allocated() / 1024**3
        peak = f"  peak GPU memory {gb:.4f} GB (book, batch 1: {BOOK_CONV_GAN_PEAK_GB} GB)"
    print(
        f"book_conv_gan {mode} (batch {batch}, {label(flags)}): {rate:8.1f} steps/s "
        f"{rate * batch:9.1f} images/s{peak}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--images", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--gan-steps", type=int, default=200, help="timed steps at batch 1")
    parser.add_argument("--gan-batches", default="1,64", help="book_conv_gan batch sizes")
    parser.add_argument(
        "--speed", default="none,amp+channels_last", help="flag sets for the fast-mode runs"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU (try --device cpu for a smoke run)")
        return 2
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}")
    for flags in flag_sets(args.speed):
        classifier(device, args.images, args.epochs, flags)
    for batch in (int(b) for b in args.gan_batches.split(",")):
        steps = args.gan_steps if batch == 1 else max(args.gan_steps // 4, 1)
        for flags in flag_sets(args.speed) if batch > 1 else [{}]:  # book mode takes none
            conv_gan(device, batch, steps, flags)
    return 0


if __name__ == "__main__":
    sys.exit(main())
