"""fit() as the worker runs it (checkpoints, metrics, sample grids on) vs a bare PyTorch loop
of the same model, data, batch size and steps, in the same process, interleaved.

    python -m bench.overhead [--runs 5] [--steps 300]

Prints the median images/s of each and their ratio (goal >= 0.97)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch import nn
from torch.nn import functional as F

from shared.schemas import ClassifierSpec
from workers.trainer.data import Batches, load_dataset
from workers.trainer.loop import fit
from workers.trainer.models import build_model
from workers.trainer.run import Run


def bare(steps: int, batch: int) -> float:
    """The loop a person would write: preloaded tensors, Adam, BCELoss on one-hot."""
    torch.manual_seed(0)
    data = load_dataset("mnist-5k")
    x_all, y_all = data.train_x.float().div_(255), data.train_y
    model = build_model("book_cnn")
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = nn.BCELoss()
    batches = Batches(x_all, y_all, batch, seed=0)
    done, started = 0, 0.0
    epoch = 0
    while done < steps:
        for x, y in batches.epoch(epoch):
            loss = loss_fn(model(x), F.one_hot(y, 10).float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == 1:  # like fit(), which profiles its first step: time from the second
                started = time.perf_counter()
            if done == steps:
                break
        epoch += 1
    loss.item()
    return (steps - 1) * batch / (time.perf_counter() - started)


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
    bare(20, args.batch)  # warm-up: thread pools, allocator
    pipeline(20, args.batch)
    rates: dict[str, list[float]] = {"bare": [], "fit": []}
    for _ in range(args.runs):  # interleaved, so drift affects both alike
        rates["bare"].append(bare(args.steps, args.batch))
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
