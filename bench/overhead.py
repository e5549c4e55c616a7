"""fit() as the worker runs it (checkpoints, metrics, sample grids on) vs a bare PyTorch loop
of the same model, data, batch size and steps, in the same process.

    python -m bench.overhead [--rounds 9] [--steps 300]

Each round runs the bare loop, fit() with its artifacts off ("quiet": metric events only)
and fit() with everything on, back to back in a rotating order, and takes each fit's ratio
to that round's bare loop: the machine's speed drifts by 2x over minutes here, and a round's
runs share most of that drift. Prints the median ratio over rounds (goal >= 0.97)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable

import torch

from bench.bare import bare_loop
from shared.schemas import ClassifierSpec
from workers.trainer.data import load_dataset
from workers.trainer.fit import fit
from workers.trainer.run import Run

NEVER = 10_000_000  # an interval no run reaches


def pipeline(steps: int, batch: int, artifacts_every: int) -> float:
    spec = ClassifierSpec(
        batch_size=batch,
        epochs=100,
        max_steps=steps,
        checkpoint_every=artifacts_every,
        sample_every=artifacts_every,
        log_every=10,
        device="cpu",
    )
    with tempfile.TemporaryDirectory() as root:
        return fit(spec, Run.local(root)).images_per_s  # training time only, as the worker reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--every", type=int, default=100, help="steps between checkpoints/grids")
    args = parser.parse_args()
    runs: dict[str, Callable[[], float]] = {
        "bare": lambda: bare_loop(args.steps, args.batch).images_per_s,
        "quiet": lambda: pipeline(args.steps, args.batch, NEVER),
        "fit": lambda: pipeline(args.steps, args.batch, args.every),
    }
    load_dataset("mnist-5k")
    for run in runs.values():  # warm-up: thread pools, allocator
        run()
    rates: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for i in range(args.rounds):
        for name in names[i % 3 :] + names[: i % 3]:  # each goes first in a third of the rounds
            rates[name].append(runs[name]())
    print(
        f"book_cnn, mnist-5k, batch {args.batch}, {args.steps} steps, {args.rounds} rounds, "
        f"{torch.get_num_threads()} CPU threads; fit: checkpoint + grid every {args.every} "
        "steps, metrics every 10; quiet: metrics only"
    )
    for name, label in (("bare", "bare loop"), ("quiet", "fit() quiet"), ("fit", "fit()")):
        values = rates[name]
        print(
            f"{label:<12} median {statistics.median(values):>8,.0f} images/s   runs: "
            f"{[round(r) for r in values]}"
        )
    for name in ("quiet", "fit"):
        ratios = [r / b for r, b in zip(rates[name], rates["bare"], strict=True)]
        q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
        print(f"ratio {name}/bare = {median:.3f}  (per-round quartiles {q1:.3f}-{q3:.3f})")
    print("goal: fit/bare >= 0.97")


if __name__ == "__main__":
    main()
