"""Dispatch latency: submit over REST -> `running`, with a warm idle worker (torch, models and
data already loaded by an earlier job), p50/p99 over N jobs submitted one at a time.

    python -m bench.dispatch [--jobs 100]

Latency = the job's `started_at` (set by the worker as it takes its lease) minus the client's
clock just before the POST, both on this machine's wall clock. Goal: p99 <= 100 ms."""

from __future__ import annotations

import argparse
import statistics
import time

from bench.stack import local_stack
from shared.client import Client
from shared.schemas import ClassifierSpec

# The smallest real job: one step of book_cnn on mnist-5k, nothing written until the end.
SPEC = ClassifierSpec(max_steps=1, checkpoint_every=10**6, sample_every=10**6, log_every=1)


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    args = parser.parse_args()
    with local_stack() as stack, Client(stack.config.api_url, stack.config.api_token) as api:
        warm = api.wait(api.submit(SPEC).id, timeout=300, poll=0.05)  # imports, data cache, plan
        assert warm.status.value == "succeeded", warm.error
        client_ms, server_ms = [], []
        for _ in range(args.jobs):
            t0 = time.time()
            job = api.submit(SPEC)
            done = api.wait(job.id, timeout=120, poll=0.02)
            assert done.status.value == "succeeded" and done.started_at is not None, done.error
            client_ms.append((done.started_at.timestamp() - t0) * 1000)
            server_ms.append((done.started_at - done.created_at).total_seconds() * 1000)
    print(f"{args.jobs} jobs, one at a time, 1 warm idle worker (book_cnn, 1 step each)")
    for name, ms in (
        ("submit -> running (client clock)", client_ms),
        ("created -> running (API record)", server_ms),
    ):
        print(
            f"  {name:<34} p50 {percentile(ms, 50):6.1f} ms   p99 {percentile(ms, 99):6.1f} ms"
            f"   max {max(ms):6.1f} ms"
        )
    print(f"p99 {percentile(client_ms, 99):.1f} ms vs goal 100 ms")


if __name__ == "__main__":
    main()
