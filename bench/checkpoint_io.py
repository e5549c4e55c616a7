"""Checkpoint save + upload as fit() does it (snapshot on the training thread, then sha256,
PUT of step-N.pt and the latest.json commit on the background uploader) vs a raw minio
`put_object` of the same, already serialised, bytes, against a real SeaweedFS S3 server.

    python -m bench.checkpoint_io [--runs 5] [--checkpoints 8] [--model book_mlp_gan]

Prints MB/s of each, their ratio (goal >= 0.9), and how long the training thread was blocked
per checkpoint (the snapshot) against how long the upload behind it took."""

from __future__ import annotations

import argparse
import io
import statistics
import time
from typing import Any

import torch

from bench.stack import local_stack
from shared.schemas import JobSpecAdapter
from shared.storage import S3ArtifactStore
from workers.trainer import checkpoint
from workers.trainer.probe import _synthetic
from workers.trainer.recipes import make_recipe
from workers.trainer.run import Run

MODELS: dict[str, tuple[dict[str, Any], tuple[int, int, int]]] = {
    "book_conv_gan": ({"task": "gan", "model": "book_conv_gan", "resize": 128}, (3, 128, 128)),
    "book_mlp_gan": ({"task": "gan", "model": "book_mlp_gan", "resize": [218, 178]}, (3, 218, 178)),
    "book_cnn": ({"task": "classifier", "model": "book_cnn"}, (1, 28, 28)),
}


def training_state(model: str) -> dict[str, Any]:
    """Weights and Adam moments after one step: what a real checkpoint holds."""
    body, image = MODELS[model]
    data = _synthetic(image, 10, 4)
    spec = JobSpecAdapter.validate_python({**body, "batch_size": 4})
    recipe = make_recipe(spec, data, torch.device("cpu"))
    recipe.train_step(data.train_x, recipe.train_labels)
    return {**recipe.state_dict(), "step": 1, "epoch": 0}


def raw(store: S3ArtifactStore, payload: bytes, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        store.client.put_object(store.bucket, f"bench/raw/{i}", io.BytesIO(payload), len(payload))
    return time.perf_counter() - started


def pipeline(store: S3ArtifactStore, state: dict[str, Any], n: int) -> tuple[float, float]:
    """(seconds until all n checkpoints, taken back to back, are committed; seconds the first
    call blocked the caller, with the writer idle: the training stall per checkpoint)."""
    events: list[object] = []
    run = Run(f"bench-{time.monotonic_ns()}", store, events.extend)
    calls = []
    started = time.perf_counter()
    with run:
        for step in range(1, n + 1):
            t = time.perf_counter()
            run.checkpoint(step, 0, state)
            calls.append(time.perf_counter() - t)
        run.drain()
    return time.perf_counter() - started, calls[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--checkpoints", type=int, default=8)
    parser.add_argument("--model", choices=sorted(MODELS), default="book_conv_gan")
    args = parser.parse_args()
    state = training_state(args.model)
    payload = checkpoint.to_bytes(state)
    mb = len(payload) / 1e6
    with local_stack(storage_only=True) as stack:
        store = S3ArtifactStore.from_settings(stack.config.settings(), retry_s=0)
        raw(store, payload, 2)  # warm the connection pool and the volume
        pipeline(store, state, 2)
        times: dict[str, list[float]] = {"raw": [], "fit": [], "blocked": []}
        for _ in range(args.runs):  # interleaved
            times["raw"].append(raw(store, payload, args.checkpoints))
            total, blocked = pipeline(store, state, args.checkpoints)
            times["fit"].append(total)
            times["blocked"].append(blocked)
    n = args.checkpoints
    r, f = statistics.median(times["raw"]), statistics.median(times["fit"])
    blocked = statistics.median(times["blocked"])
    print(
        f"{args.model} checkpoint (weights + Adam state): {mb:.1f} MB, {n} per run, "
        f"{args.runs} interleaved runs, SeaweedFS on loopback"
    )
    print(f"  raw put_object             {n * mb / r:8.1f} MB/s")
    print(
        f"  run.checkpoint + commit    {n * mb / f:8.1f} MB/s  "
        "(snapshot, serialise, sha256, PUT, latest.json)"
    )
    print(f"ratio checkpoint/raw = {r / f:.3f}  (goal >= 0.9)")
    print(
        f"training thread blocked {blocked * 1000:.1f} ms per checkpoint (the snapshot; writer "
        f"idle), vs {f / n * 1000:.1f} ms to write each behind it"
    )


if __name__ == "__main__":
    main()
