"""The whole pipeline's cost: a job submitted over REST until it is `succeeded` (its
checkpoints, sample grids, final model, reports and summary in S3), vs the bare loop's time
for the same training (same model, data, batch size, steps) in this process.

    python -m bench.end_to_end [--runs 3] [--epochs 3]

Both sides warm (the worker ran a job first; this process loaded the data). The REST side is
timed on the client: just before the POST until the job's live event stream (SSE) says
`succeeded` (push, not polling: on 2 cores a tight poll loop slows the training it times)."""

from __future__ import annotations

import argparse
import statistics
import time

from bench.bare import bare_loop
from bench.stack import local_stack
from shared.schemas import ClassifierSpec
from trainyard.client import Client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    spec = ClassifierSpec(epochs=args.epochs)  # the demo job: defaults for checkpoints, grids
    with local_stack() as stack, Client(stack.config.api_url, stack.config.api_token) as api:
        warm = api.wait(api.submit(spec.model_copy(update={"epochs": 1})).id, timeout=600)
        assert warm.status.value == "succeeded", warm.error
        steps = warm.total_steps * args.epochs
        bare_loop(20, spec.batch_size)  # warm this process too
        rest_s, bare_s = [], []
        accuracy: dict[str, list[float]] = {"rest": [], "bare": []}
        rate: dict[str, list[float]] = {"rest": [], "bare": []}
        for _ in range(args.runs):  # interleaved; they share the 2 cores, so never at once
            t0 = time.perf_counter()
            job_id = api.submit(spec).id
            for _ in api.events(job_id):  # the stream ends when the job does
                pass
            rest_s.append(time.perf_counter() - t0)
            job = api.get(job_id)
            assert job.status.value == "succeeded" and job.result, job.error
            accuracy["rest"].append(job.result["metrics"]["test_accuracy"])
            rate["rest"].append(job.result["images_per_s"])
            bare = bare_loop(steps, spec.batch_size, spec.lr)
            bare_s.append(bare.total_s)
            accuracy["bare"].append(bare.test_accuracy)
            rate["bare"].append(bare.images_per_s)
    rest, base = statistics.median(rest_s), statistics.median(bare_s)
    print(
        f"book_cnn on mnist-5k, {args.epochs} epochs = {steps} steps of batch {spec.batch_size}, "
        f"{args.runs} interleaved runs, medians"
    )
    print(
        f"  REST submit -> succeeded  {rest:6.2f} s   runs {[round(s, 2) for s in rest_s]}   "
        f"accuracy {statistics.median(accuracy['rest']):.4f}"
    )
    print(
        f"  bare loop (train + eval)  {base:6.2f} s   runs {[round(s, 2) for s in bare_s]}   "
        f"accuracy {statistics.median(accuracy['bare']):.4f}"
    )
    r_rest, r_bare = statistics.median(rate["rest"]), statistics.median(rate["bare"])
    print(
        f"  training images/s: in the worker {r_rest:,.0f}, bare {r_bare:,.0f} "
        f"(ratio {r_rest / r_bare:.3f})"
    )
    print(f"pipeline overhead {rest - base:+.2f} s; time ratio REST/bare = {rest / base:.3f}")


if __name__ == "__main__":
    main()
