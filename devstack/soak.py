"""Chaos soak: `python -m devstack.soak --kills 20` kills the worker holding a random running job
with SIGKILL, over and over, at random steps, and checks that every job still ends
`succeeded` exactly once, with no gap in its metrics. Prints a one-line verdict per job."""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

from devstack.stack import Stack, StackConfig, wait_for
from shared.state.jobs import JobRegistry
from shared.status import JobStatus
from trainyard.client import Client

SPEC = {
    "task": "classifier",
    "batch_size": 1,
    "epochs": 2,
    "lr": 1e-3,
    "checkpoint_every": 200,
    "log_every": 20,
    "sample_every": 100_000,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    overrides = {
        "TRAINYARD_LEASE_TTL_S": "3",
        "TRAINYARD_PACK_GATHER_S": "0.5",  # below a third of the lease TTL
        "TRAINYARD_RECONCILE_INTERVAL_S": "1",
        "TRAINYARD_RECONCILE_GRACE_S": "3",
        "TRAINYARD_MAX_ATTEMPTS": str(args.kills + 5),
    }
    stack = Stack(
        StackConfig.fresh(Path(tempfile.mkdtemp()), workers=2, preferred=False, overrides=overrides)
    )
    stack.up()
    started = time.monotonic()
    registry = JobRegistry(stack.redis_client())
    try:
        with Client(stack.config.api_url, stack.config.api_token) as api:
            ids = [api.submit({**SPEC, "seed": i}).id for i in range(args.jobs)]
            kills = 0
            while kills < args.kills:
                jobs = [api.get(i) for i in ids]
                # only jobs a live worker holds right now (not ones waiting to be reclaimed)
                running = [
                    j
                    for j in jobs
                    if j.status is JobStatus.RUNNING and j.worker and registry.leases.holder(j.id)
                ]
                if not running:
                    if all(api.get(i).status.is_terminal() for i in ids):
                        print(f"all jobs finished after {kills} kills; submitting more")
                        ids.append(api.submit({**SPEC, "seed": len(ids)}).id)
                    time.sleep(0.5)
                    continue
                job = rng.choice(running)
                target = job.step + rng.randint(50, 600)

                def advanced(job_id: str = job.id, target: int = target) -> bool:
                    return api.get(job_id).step >= target

                try:
                    wait_for(advanced, 60, "progress")
                except Exception:
                    continue
                current = api.get(job.id)
                if (
                    current.status is not JobStatus.RUNNING
                    or not current.worker
                    or not registry.leases.holder(job.id)
                ):
                    continue
                victim = next(w for w in stack.workers if current.worker.startswith(f"{w.name}-"))
                victim.signal(signal.SIGKILL)
                victim.wait_exit(10)
                kills += 1
                print(
                    f"kill {kills:2d}: {victim.name} at step {current.step} of job {job.id}",
                    flush=True,
                )
                victim.start()
            ok = True
            for job_id in ids:
                done = api.wait(job_id, timeout=1800)
                succeeded = [
                    e
                    for e in api.metrics(job_id, kind="status")
                    if e.info.get("status") == "succeeded"
                ]
                logged = {e.step for e in api.metrics(job_id, kind="step")}
                gaps = set(range(20, (done.total_steps or 0) + 1, 20)) - logged
                good = done.status is JobStatus.SUCCEEDED and len(succeeded) == 1 and not gaps
                ok &= good
                print(
                    f"job {job_id}: {done.status.value}, attempts {done.attempts}, "
                    f"'succeeded' events {len(succeeded)}, step gaps {len(gaps)}: "
                    f"{'OK' if good else 'BAD'}"
                )
            print(
                f"{kills} kills in {time.monotonic() - started:.0f} s: "
                f"{'every job succeeded exactly once' if ok else 'FAILURES'}"
            )
            return 0 if ok else 1
    finally:
        stack.down()


if __name__ == "__main__":
    sys.exit(main())
