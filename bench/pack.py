"""Packing with torch alone (no Redis, Celery or S3): K trials of one pack key (lr x seed)
trained four ways on this machine, in one run:

- fused:      fit_pack(executor="fused"): one vmapped step over the K trials' stacked weights
              and one stacked Adam step (workers/trainer/fused.py);
- loop:       fit_pack(executor="loop"): one process, each trial's own step in turn;
- auto:       fit_pack(executor="auto"), the workers' default: times both on the first
              steps, keeps the faster;
- sequential: K calls of fit(), one after the other (the baseline of the ratios);
- processes:  K fit() processes at once, the cores split between them.

    python -m bench.pack [--trials 16] [--model book_cnn|conv_gan] [--epochs N]
                         [--batch-size N] [--max-steps N] [--device cpu|cuda]
                         [--ways fused,loop,...]
    python -m bench.pack --steps [--trials 16] [--model ...] [--device ...]

`--steps` times the pack step alone instead (no data order, evaluation or writes): K trials'
own train_step in turn against one FusedPack step, at several batch sizes.

Every trial writes what a job writes (checkpoints, grids, final model) to a temporary folder;
GAN scoring is off (TRAINYARD_QUALITY=false: its reference classifier is trained once per
data set, the same for every way). Prints each way's wall time, its ratio against
sequential and the best held-out metric it found; docs/packing.md reads the numbers."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import torch

from shared.config import get_settings
from shared.schemas import ClassifierSpec, GanSpec, JobSpec, JobSummary
from workers.trainer.data import load_dataset
from workers.trainer.fit import fit
from workers.trainer.fused import FusedPack
from workers.trainer.pack import fit_pack
from workers.trainer.recipes import Recipe, make_recipe
from workers.trainer.run import Run

WAYS = ("fused", "loop", "auto", "sequential", "processes")
LRS = {"book_cnn": (3e-3, 1e-2, 3e-2, 1e-3), "conv_gan": (2e-3, 1e-3, 5e-4, 2e-4)}
METRIC = {"book_cnn": ("test_accuracy", max), "conv_gan": ("test_d_fake", max)}


def specs_for(args: argparse.Namespace) -> list[JobSpec]:
    """`trials` specs of one pack key: the lrs of LRS round robin, seeds 0, 1, 2, ..."""
    quiet = {
        "dataset": args.dataset,
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "device": args.device,
        "checkpoint_every": 10**6,  # the end's checkpoint only, as a short job
        "sample_every": 10**6,
        "log_every": 50,
    }
    if args.batch_size:
        quiet["batch_size"] = args.batch_size
    lrs = LRS[args.model]
    out: list[JobSpec] = []
    for i in range(args.trials):
        lr, seed = lrs[i % len(lrs)], i
        if args.model == "book_cnn":
            out.append(ClassifierSpec(model="book_cnn", lr=lr, seed=seed, **quiet))
        else:
            out.append(GanSpec(model="conv_gan", lr=lr, seed=seed, **{"batch_size": 64, **quiet}))
    return out


def _fit_one(spec: JobSpec, root: str, threads: int) -> JobSummary:
    torch.set_num_threads(threads)
    return fit(spec, Run.local(root))


def timed(way: Callable[[], list[JobSummary | BaseException]]) -> tuple[float, list[JobSummary]]:
    began = time.perf_counter()
    outcomes = way()
    wall = time.perf_counter() - began
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    if failed:
        raise RuntimeError(f"{len(failed)} trials failed: {failed[0]!r}")
    return wall, [o for o in outcomes if isinstance(o, JobSummary)]


def run_way(way: str, specs: Sequence[JobSpec], root: str) -> tuple[float, list[JobSummary]]:
    def runs() -> list[Run]:
        return [Run.local(root) for _ in specs]

    if way in ("fused", "loop", "auto"):
        return timed(lambda: fit_pack(specs, runs(), executor=way))  # type: ignore[arg-type]
    if way == "sequential":
        return timed(lambda: [fit(spec, Run.local(root)) for spec in specs])
    threads = max(1, torch.get_num_threads() // len(specs))
    context = multiprocessing.get_context("spawn")  # CUDA and forked OpenMP do not mix

    def concurrent() -> list[JobSummary | BaseException]:
        with ProcessPoolExecutor(len(specs), mp_context=context) as pool:
            return list(pool.map(_fit_one, specs, [root] * len(specs), [threads] * len(specs)))

    return timed(concurrent)


def step_table(args: argparse.Namespace) -> None:
    """Milliseconds per pack step of K trials, looped and fused, by batch size."""
    device = torch.device(args.device)
    data = load_dataset(args.dataset).to(device)
    print(f"{args.trials} {args.model} trials, {args.device}, one pack step (ms), median of 20")
    for batch in (1, 4, 16, 32, 64, 128):
        args.batch_size = batch
        recipes: list[Recipe] = []
        for spec in specs_for(args):
            torch.manual_seed(spec.seed)
            recipes.append(make_recipe(spec, data, device))
        xs = [data.train_x[:batch] for _ in recipes]
        ys = [r.train_labels[:batch] for r in recipes]
        pack = FusedPack(recipes)
        loop = _median_ms(partial(_loop_step, recipes, xs, ys), device)
        fused = _median_ms(partial(pack.step, xs, ys), device)
        ratio = loop / fused
        print(
            f"  batch {batch:4d}: loop {loop:8.2f}  fused {fused:8.2f}  loop / fused {ratio:5.2f}x"
        )
        pack.release()


def _loop_step(recipes: list[Recipe], xs: list[torch.Tensor], ys: list[torch.Tensor]) -> None:
    for r, x, y in zip(recipes, xs, ys, strict=True):
        r.train_step(x, y)


def _median_ms(step: Callable[[], object], device: torch.device, repeat: int = 20) -> float:
    for _ in range(3):  # warm-up
        step()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - began)
    return sorted(times)[len(times) // 2] * 1000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--model", choices=tuple(LRS), default="book_cnn")
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the model's")
    parser.add_argument("--max-steps", type=int, default=None, help="cap each trial's steps")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", action="store_true", help="time the pack step alone")
    parser.add_argument("--ways", default=",".join(WAYS), help=f"any of {', '.join(WAYS)}")
    args = parser.parse_args(argv)
    os.environ["TRAINYARD_QUALITY"] = "false"  # inherited by the processes' fit()
    get_settings.cache_clear()
    ways = [w for w in args.ways.split(",") if w]
    if unknown := set(ways) - set(WAYS):
        parser.error(f"unknown ways {sorted(unknown)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here")
        return 2
    load_dataset(args.dataset)  # downloads and warms the cache outside every timing
    if args.steps:
        step_table(args)
        return 0
    specs = specs_for(args)
    name, best_of = METRIC[args.model]
    print(
        f"{args.trials} {args.model} trials on {args.dataset}, {specs[0].epochs} epoch(s) of "
        f"batch {specs[0].batch_size}"
        f"{f', at most {args.max_steps} steps' if args.max_steps else ''}, {args.device}, "
        f"{torch.get_num_threads()} torch threads"
    )
    walls: dict[str, float] = {}
    for way in ways:
        with tempfile.TemporaryDirectory() as root:
            wall, summaries = run_way(way, specs, root)
        walls[way] = wall
        steps = sum(s.steps for s in summaries)
        best = best_of(s.metrics.get(name, float("nan")) for s in summaries)
        ratio = f"{walls['sequential'] / wall:5.2f}x" if "sequential" in walls else "   - "
        print(
            f"  {way:<10} {wall:7.1f} s  {steps / wall:8.1f} trial-steps/s  "
            f"vs sequential {ratio}  best {name} {best:.4f}"
        )
    if "sequential" in walls:
        print("ratios: sequential wall / way's wall (higher is faster)")
        for way, wall in walls.items():
            print(f"  {way:<10} {walls['sequential'] / wall:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
