"""Fast mode vs the book's recipe (batch 1) for book_cnn on mnist-5k: images/s of each, and
the held-out accuracy each reaches in the same wall time.

    python -m bench.book_speedup [--seconds 30]

Goal: fast mode >= 30x the book's throughput at >= the book's accuracy."""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

from shared.schemas import ClassifierSpec
from workers.trainer.data import load_dataset
from workers.trainer.fit import fit
from workers.trainer.run import Run


def run(spec: ClassifierSpec) -> tuple[float, float, int, float]:
    with tempfile.TemporaryDirectory() as root:
        s = fit(spec, Run.local(root))
    return s.images_per_s, s.metrics["test_accuracy"], s.steps, s.wall_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="training budget for each")
    args = parser.parse_args()
    load_dataset("mnist-5k")
    quiet: dict[str, Any] = {
        "checkpoint_every": 10**6,
        "sample_every": 10**6,
        "log_every": 1000,
        "device": "cpu",
    }
    # Measure each mode's rate on a short run, then give each the same training time budget.
    book_rate = run(ClassifierSpec(mode="book", max_steps=2000, **quiet))[0]
    fast_spec = ClassifierSpec(max_steps=100, **quiet)  # fast mode's defaults
    fast_rate = run(fast_spec)[0]
    book_steps = int(book_rate * args.seconds)  # batch 1: one image per step
    fast_steps = int(fast_rate * args.seconds / fast_spec.batch_size)
    book = run(ClassifierSpec(mode="book", epochs=100, max_steps=book_steps, **quiet))
    fast = run(ClassifierSpec(epochs=1000, max_steps=fast_steps, **quiet))
    print(f"book_cnn on mnist-5k, {args.seconds:.0f} s of training each (CPU)")
    for name, (rate, acc, steps, wall) in (
        ("book (batch 1, lr 1e-3)", book),
        (f"fast (batch {fast_spec.batch_size}, lr {fast_spec.lr:g})", fast),
    ):
        print(
            f"  {name:<26} {rate:>9,.0f} images/s  {steps:>6} steps in {wall:5.1f} s  "
            f"held-out accuracy {acc:.4f}"
        )
    print(
        f"throughput ratio fast/book = {fast[0] / book[0]:.1f}x  (goal >= 30x); "
        f"accuracy fast - book = {fast[1] - book[1]:+.4f}"
    )


if __name__ == "__main__":
    main()
