"""fit() as the worker runs it (checkpoints, metrics, sample grids on) vs a bare PyTorch loop
of the same model, data, batch size and steps, in the same process, interleaved.

    python -m bench.overhead [--runs 5] [--steps 300]

Prints the median images/s of each and their ratio (goal >= 0.97)."""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from bench.bare import bare_loop
from shared.schemas import ClassifierSpec
from workers.trainer.data import load_dataset
from workers.trainer.loop import fit
from workers.trainer.run import Run


def pipeline(steps: int, batch: int) -> float:
    spec = ClassifierSpec(
        batch_size=batch,
        epochs=100,
        max_steps=steps,
        checkpoint_every=100,
        sample_every=100,
        log_every=10,
        device="cpu",
    )
    with tempfile.TemporaryDirectory() as root:
        return fit(spec, Run.local(root)).images_per_s  # training time only, as the worker reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    load_dataset("mnist-5k")
    bare_loop(20, args.batch)  # warm-up: thread pools, allocator
    pipeline(20, args.batch)
    rates: dict[str, list[float]] = {"bare": [], "fit": []}
    for _ in range(args.runs):  # interleaved, so drift affects both alike
        rates["bare"].append(bare_loop(args.steps, args.batch).images_per_s)
        rates["fit"].append(pipeline(args.steps, args.batch))
    b, f = statistics.median(rates["bare"]), statistics.median(rates["fit"])
    print(
        f"book_cnn, mnist-5k, batch {args.batch}, {args.steps} steps, {args.runs} interleaved "
        f"runs, {torch.get_num_threads()} CPU threads"
    )
    print(f"bare loop  {b:>10,.0f} images/s   runs: {[round(r) for r in rates['bare']]}")
    print(f"fit()      {f:>10,.0f} images/s   runs: {[round(r) for r in rates['fit']]}")
    print(f"ratio fit/bare = {f / b:.3f}  (goal >= 0.97)")


if __name__ == "__main__":
    main()
