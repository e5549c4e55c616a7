"""Scaling out: jobs per minute with 1, 2 and 4 workers on small jobs, with threads sized to
each worker's CPU share (workers/trainer/cpu.py) and, as the same-run baseline, the old
behaviour: every worker's torch takes all of the machine's cores.

    python -m bench.scale [--jobs 12] [--steps 30] [--runs 2] [--workers 1 2 4]

Each case is a fresh local stack (real Redis, S3, API, planner, Celery workers). devstack
gives each of N workers cores/N (TRAINYARD_WORKER_CPUS); the baseline sets it to all the
cores for every worker, which is what torch does by default. The workers are warmed first
(2 jobs each: imports, data set cache, the shape's memory probe). Then `--jobs` book_cnn
classifier jobs of `--steps` steps are submitted at once; the time runs from just before the
first POST to the last job's `finished_at` (the same machine's clock). Best of `--runs`.

Goals (issue 15): 2 workers beat 1; 4 workers on 2 cores are at most 10% below 2."""

from __future__ import annotations

import argparse
import time

from bench.stack import local_stack
from shared.schemas import ClassifierSpec
from trainyard.client import Client
from workers.trainer.cpu import cpu_quota


def jobs_per_minute(workers: int, jobs: int, steps: int, runs: int, all_cores: bool) -> float:
    """The best rate of `runs` batches of `jobs` jobs on a fresh stack of `workers`."""
    overrides = {"TRAINYARD_WORKER_CPUS": f"{cpu_quota():g}"} if all_cores else {}
    spec = ClassifierSpec(max_steps=steps, checkpoint_every=10**6, sample_every=10**6)
    best = 0.0
    with (
        local_stack(workers=workers, overrides=overrides) as stack,
        Client(stack.config.api_url, stack.config.api_token) as api,
    ):
        warm = [api.submit(spec) for _ in range(2 * workers)]
        for job in warm:
            done = api.wait(job.id, timeout=600, poll=0.5)
            assert done.status.value == "succeeded", done.error
        for _ in range(runs):
            t0 = time.time()
            ids = [api.submit(spec).id for _ in range(jobs)]
            finished = []
            for job_id in ids:
                done = api.wait(job_id, timeout=1200, poll=0.5)
                assert done.status.value == "succeeded" and done.finished_at, done.error
                finished.append(done.finished_at.timestamp())
            best = max(best, jobs / (max(finished) - t0) * 60)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    cores = cpu_quota()
    rates: dict[tuple[str, int], float] = {}
    for n in args.workers:
        for mode in ("sized", "all-cores"):
            rate = jobs_per_minute(n, args.jobs, args.steps, args.runs, mode == "all-cores")
            rates[mode, n] = rate
            print(f"  {n} workers, {mode:9}: {rate:6.1f} jobs/min", flush=True)
    print(
        f"\n{args.jobs} book_cnn jobs of {args.steps} steps, warm workers, {cores:g} cores; "
        f"best of {args.runs}"
    )
    print("| Workers | Threads per worker | Jobs/min (sized) | Jobs/min (old: all cores) | Ratio |")
    print("| --- | --- | --- | --- | --- |")
    for n in args.workers:
        sized, old = rates["sized", n], rates["all-cores", n]
        threads = max(1, int(cores / n))
        print(f"| {n} | {threads} vs {cores:g} | {sized:.1f} | {old:.1f} | {sized / old:.2f}x |")
    for n, m in ((2, 1), (4, 2)):
        if ("sized", n) in rates and ("sized", m) in rates:
            ratio = rates["sized", n] / rates["sized", m]
            print(f"sized: {n} workers / {m} = {ratio:.2f}x")
            old = rates["all-cores", n] / rates["all-cores", m]
            print(f"old:   {n} workers / {m} = {old:.2f}x")


if __name__ == "__main__":
    main()
