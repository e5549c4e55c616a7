"""API under load: `POST /v1/jobs` and `GET /v1/jobs/{id}` from concurrent async clients on
loopback, with no training worker running (jobs stay queued; the planner answers from its
cache after the first job). Closed loop: each client POSTs a job, GETs it, and repeats.

    python -m bench.api_load [--clients 8] [--seconds 10]

Prints requests/s and p50/p99 latency per endpoint. Goal on a 2-core machine: >= 500 req/s
with p99 <= 50 ms. The load generator runs on the same cores as the API, Redis and S3."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx

from bench.stack import local_stack

SPEC = {"task": "classifier", "model": "book_cnn", "dataset": "mnist-5k", "epochs": 1}


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def client(
    http: httpx.AsyncClient, until: float, latency: dict[str, list[float]], errors: list[int]
) -> None:
    while time.perf_counter() < until:
        t = time.perf_counter()
        r = await http.post("/v1/jobs", json=SPEC)
        latency["POST /v1/jobs"].append(time.perf_counter() - t)
        if r.status_code != 201:
            errors.append(r.status_code)
            continue
        t = time.perf_counter()
        g = await http.get(f"/v1/jobs/{r.json()['id']}")
        latency["GET /v1/jobs/{id}"].append(time.perf_counter() - t)
        if g.status_code != 200:
            errors.append(g.status_code)


async def load(url: str, token: str, clients: int, seconds: float) -> None:
    latency: dict[str, list[float]] = {"POST /v1/jobs": [], "GET /v1/jobs/{id}": []}
    errors: list[int] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as http:
        await client(http, time.perf_counter() + 2, {k: [] for k in latency}, [])  # warm-up
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(client(http, until, latency, errors) for _ in range(clients)))
        wall = time.perf_counter() - started
    every = [x for v in latency.values() for x in v]
    print(
        f"{clients} concurrent clients for {wall:.1f} s over loopback (keep-alive), "
        f"no training worker; API: 1 uvicorn process"
    )
    for name, values in latency.items():
        print(
            f"  {name:<18} {len(values) / wall:7.0f} req/s   p50 {pct(values, 50) * 1000:5.1f} ms"
            f"   p99 {pct(values, 99) * 1000:5.1f} ms"
        )
    print(f"  errors: {len(errors)} {sorted(set(errors))}")
    print(
        f"total {len(every) / wall:.0f} req/s (goal >= 500), p99 {pct(every, 99) * 1000:.1f} ms "
        f"(goal <= 50 ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    overrides = {"TRAINYARD_MAX_QUEUED_PER_OWNER": str(10**9)}
    with local_stack(workers=0, overrides=overrides) as stack:
        asyncio.run(load(stack.config.api_url, stack.config.api_token, args.clients, args.seconds))


if __name__ == "__main__":
    main()
