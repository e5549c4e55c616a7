"""`make demo`: submit the book CNN over REST to the local stack, follow it, print the results."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from devstack.stack import StackConfig
from shared.schemas import ClassifierSpec, JobPublic
from trainyard.client import Client


def main() -> int:
    console = Console()
    config = StackConfig.load(Path(".trainyard").resolve())
    if config is None:
        console.print("[red]no local stack: run `make up` first[/red]")
        return 1
    started = time.perf_counter()
    with Client(config.api_url, config.api_token) as client:
        spec = ClassifierSpec(name="demo: book CNN on mnist-5k")
        job = client.submit(spec)
        console.print(f"submitted job [bold]{job.id}[/bold] over REST: POST {client.url}/v1/jobs")
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("queued", total=None, info="")

            def show(j: JobPublic) -> None:
                loss = ""
                if j.status.value == "running":
                    steps = client.metrics(j.id, kind="step")[-1:]
                    loss = f"loss {steps[0].metrics['loss']:.4f}" if steps else ""
                bar.update(
                    task,
                    description=j.status.value,
                    completed=j.step,
                    total=j.total_steps,
                    info=f"epoch {j.epoch + 1}/{spec.epochs} {loss}",
                )

            job = client.wait(job.id, timeout=1800, on_update=show)
        wall = time.perf_counter() - started
        if job.status.value != "succeeded" or job.result is None:
            console.print(f"[red]job {job.id} ended {job.status.value}: {job.error}[/red]")
            return 1
        result, memory = job.result, job.result["memory"]
        console.print(f"\n[bold green]succeeded[/bold green] in {wall:.1f} s end to end")
        console.print(
            f"  held-out accuracy  {result['metrics']['test_accuracy']:.4f} "
            f"(1,000 mnist-5k test digits)"
        )
        console.print(
            f"  throughput         {result['images_per_s']:,.0f} images/s "
            f"on {memory['device_name']}"
        )
        if memory.get("peak_gpu_allocated_bytes") is not None:
            console.print(
                f"  peak GPU memory    {memory['peak_gpu_allocated_bytes'] / 2**20:.1f} MiB "
                f"allocated, {memory['peak_gpu_reserved_bytes'] / 2**20:.1f} MiB reserved"
            )
        else:
            console.print(
                f"  peak host memory   {memory['peak_host_rss_bytes'] / 2**20:.0f} MiB RSS "
                "(CPU run: host memory, not GPU)"
            )
        console.print("  artifacts (presigned, valid 15 min):")
        for artifact in client.artifacts(job.id):
            ok = httpx.get(artifact.url, timeout=30).status_code == 200
            console.print(
                f"    {'ok ' if ok else 'ERR'} {artifact.size:>8,} B  {artifact.url}",
                soft_wrap=True,
            )
            if not ok:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
