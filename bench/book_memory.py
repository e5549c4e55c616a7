"""The book's GPU memory comparison (Make Your First GAN With PyTorch, ch. 3, §3.1.1;
docs/book.md) on the device at hand: peak tensor memory of one training step of the
fully-connected vs the convolutional models, at the book's batch size of 1.

    python -m bench.book_memory [--device cpu|cuda]

On CUDA the figure is torch.cuda.max_memory_allocated() over the step (the book's own
measure); on CPU it is the PyTorch profiler's peak tensor bytes (profile_memory=True). Both
count parameters, gradients, Adam state and activations; the step is the pipeline's own
(GanRecipe/ClassifierRecipe in book mode), on random images of the book's sizes.
"""

from __future__ import annotations

import argparse
import gc
from dataclasses import dataclass

import torch

from shared.schemas import JobSpecAdapter
from workers.trainer.data import ImageData
from workers.trainer.memory import profile_tensor_peak
from workers.trainer.recipes import make_recipe

GB = 1024**3


@dataclass
class Row:
    name: str
    body: dict[str, object]
    image: tuple[int, int, int]  # the data's own (C, H, W) before the model's transforms
    book_peak_gb: float | None  # the book's ch. 3 §3.1.1 (Tesla T4)


PAIRS = [
    (
        Row(
            "book_mlp_gan",
            {"task": "gan", "model": "book_mlp_gan", "mode": "book"},
            (3, 218, 178),
            1.09,
        ),
        Row(
            "book_conv_gan",
            {"task": "gan", "model": "book_conv_gan", "mode": "book", "crop": 128},
            (3, 218, 178),
            0.2036,
        ),
    ),
    (
        Row(
            "book_mlp",
            {"task": "classifier", "model": "book_mlp", "mode": "book"},
            (1, 28, 28),
            None,
        ),
        Row(
            "book_cnn",
            {"task": "classifier", "model": "book_cnn", "mode": "book"},
            (1, 28, 28),
            None,
        ),
    ),
]


def synthetic(image: tuple[int, int, int], n: int = 4) -> ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, *image), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 10
    return ImageData("synthetic", x, y, x, y, [str(i) for i in range(10)])


def step_peak_bytes(row: Row, device: torch.device) -> int:
    """Peak tensor bytes of the first training step, from a fresh model."""
    spec = JobSpecAdapter.validate_python(row.body)
    data = synthetic(row.image).to(device)
    recipe = make_recipe(spec, data, device)
    x = recipe.prepare(data.train_x[:1])
    y = data.train_y[:1]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        recipe.train_step(x, y)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        out: dict[str, int] = {}
        with profile_tensor_peak(recipe.state_dict().values(), out):
            recipe.train_step(x, y)
        peak = out["peak_step_tensor_bytes"]
    del recipe, data, x, y
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(parser.parse_args().device)
    measure = (
        "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "PyTorch profiler, profile_memory=True"
    )
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (host memory)"
    print(f"peak tensor memory of one training step, batch 1, on {where}; measured by {measure}\n")
    print(f"{'model':<15}{'measured GB':>13}{'MiB':>10}{'book GB (T4)':>14}")
    for fc, conv in PAIRS:
        fc_peak, conv_peak = step_peak_bytes(fc, device), step_peak_bytes(conv, device)
        for row, peak in ((fc, fc_peak), (conv, conv_peak)):
            book = f"{row.book_peak_gb:.4f}" if row.book_peak_gb else "—"
            print(f"{row.name:<15}{peak / GB:>13.4f}{peak / 2**20:>10.2f}{book:>14}")
        book_ratio = (
            f"{fc.book_peak_gb / conv.book_peak_gb:.1f}x"
            if fc.book_peak_gb and conv.book_peak_gb
            else "not reported"
        )
        print(
            f"  {fc.name} / {conv.name}: {fc_peak / conv_peak:.1f}x measured, book: {book_ratio}\n"
        )
    print(
        "The book's figures span a whole training run in a notebook on a Tesla T4 (CUDA "
        "context and data excluded); ours are one step's tensors, so compare the ratios."
    )


if __name__ == "__main__":
    main()
