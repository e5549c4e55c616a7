"""API under load: `POST /v1/jobs` and `GET /v1/jobs/{id}` from concurrent async clients on
loopback, with no training worker running (jobs stay queued; the planner answers from its
cache after the first job). Closed loop: each client POSTs a job, GETs it, and repeats.

    python -m bench.api_load [--clients 8] [--seconds 10] [--processes 1]

Prints requests/s and p50/p99 latency per endpoint, and the CPU each process spent per
request (from /proc): the API's, Redis's and the load generator's own. Goal on a 2-core
machine: >= 500 req/s with p99 <= 50 ms. The load generator runs on the same cores as the
API and Redis, so it is aiohttp's client: httpx's cost ~3.5 ms of CPU per request here, more
than the API itself, and capped the figure at ~280 req/s whatever the API did.

`--processes 2` runs uvicorn with 2 worker processes (WEB_CONCURRENCY), as two API replicas
would share a 2-core node; deployments scale the API by replicas of one process each (one
process per pod keeps each /metrics endpoint whole)."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import aiohttp

from bench.stack import local_stack

SPEC = {"task": "classifier", "model": "book_cnn", "dataset": "mnist-5k", "epochs": 1}
Latency = dict[str, list[float]]


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def cpu_s(pid: int, children: bool = False) -> float:
    """User + system CPU seconds a process (and, if asked, its children: uvicorn's worker
    processes) has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    if not children:
        return own
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return own + sum(cpu_s(int(c), children=True) for c in f.read().split())


async def client(
    http: aiohttp.ClientSession, until: float, latency: Latency, errors: list[int]
) -> None:
    while time.perf_counter() < until:
        t = time.perf_counter()
        async with http.post("/v1/jobs", json=SPEC) as r:
            job = await r.json()
        latency["POST /v1/jobs"].append(time.perf_counter() - t)
        if r.status != 201:
            errors.append(r.status)
            continue
        t = time.perf_counter()
        async with http.get(f"/v1/jobs/{job['id']}") as g:
            await g.read()
        latency["GET /v1/jobs/{id}"].append(time.perf_counter() - t)
        if g.status != 200:
            errors.append(g.status)


async def load(
    url: str, token: str, clients: int, seconds: float, pids: dict[str, int], processes: int
) -> None:
    latency: Latency = {"POST /v1/jobs": [], "GET /v1/jobs/{id}": []}
    errors: list[int] = []
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=clients)  # one keep-alive connection per client
    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as http:
        await client(http, time.perf_counter() + 2, {k: [] for k in latency}, [])  # warm-up
        cpu_before = {name: cpu_s(pid, name == "api") for name, pid in pids.items()}
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(client(http, until, latency, errors) for _ in range(clients)))
        wall = time.perf_counter() - started
        cpu = {name: cpu_s(pid, name == "api") - cpu_before[name] for name, pid in pids.items()}
    every = [x for v in latency.values() for x in v]
    print(
        f"{clients} concurrent clients for {wall:.1f} s over loopback (keep-alive), "
        f"no training worker; API: {processes} uvicorn process{'es' if processes > 1 else ''}"
    )
    for name, values in latency.items():
        print(
            f"  {name:<18} {len(values) / wall:7.0f} req/s   p50 {pct(values, 50) * 1000:5.1f} ms"
            f"   p99 {pct(values, 99) * 1000:5.1f} ms"
        )
    print(f"  errors: {len(errors)} {sorted(set(errors))}")
    per_request = ", ".join(f"{name} {s * 1000 / len(every):.2f}" for name, s in cpu.items())
    print(f"  CPU per request (ms): {per_request}")
    print(
        f"total {len(every) / wall:.0f} req/s (goal >= 500), p99 {pct(every, 99) * 1000:.1f} ms "
        f"(goal <= 50 ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=1, help="uvicorn worker processes")
    args = parser.parse_args()
    overrides = {"TRAINYARD_MAX_QUEUED_PER_OWNER": str(10**9)}
    if args.processes > 1:
        overrides["WEB_CONCURRENCY"] = str(args.processes)  # read by uvicorn itself
    with local_stack(workers=0, overrides=overrides) as stack:
        pids = {"api": stack.api.pid(), "redis": stack.redis.pid(), "load generator": os.getpid()}
        missing = [name for name, pid in pids.items() if pid is None]
        assert not missing, f"no pid for {missing}"
        asyncio.run(
            load(
                stack.config.api_url,
                stack.config.api_token,
                args.clients,
                args.seconds,
                {k: v for k, v in pids.items() if v is not None},
                args.processes,
            )
        )


if __name__ == "__main__":
    main()
