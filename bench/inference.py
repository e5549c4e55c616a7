"""Serving a trained model: predict and sample latency through the API (POST, Redis, the
inference worker's queue, the answer back) vs the same model called in this process.

    python -m bench.inference [--requests 200] [--batches 5] [--samples 30]

A local stack (quality scoring off: no reference classifier to train) trains a small book_cnn
(150 steps) and a small conv_gan (40 steps); then, all warm (a warm-up of each call first):

- predict, one 28x28 PNG digit: p50/p99 of `--requests` sequential calls;
- predict, a 1,024-image .npz batch: images per second, median of `--batches` calls;
- samples, n=64: p50/p99 of `--samples` calls (the grid PNG and the .npz written to S3).

The baseline is the same work without the API: the API's own input parsing
(shared.uploads.predict) and the inference worker's own service (workers.inference.service,
the same model from the same object store, warm in its cache, the samples written to the
same S3) called in this process, with as many torch threads as the inference worker uses
(devstack gives it 1 core). The ratio API / in-process is the serving overhead."""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from bench.stack import local_stack
from shared.config import Settings
from shared.storage import S3ArtifactStore
from shared.uploads.predict import parse_predict_input
from trainyard.client import Client
from workers.inference.service import InferenceService
from workers.trainer.data import load_dataset

BATCH = 1024
INFERENCE_THREADS = 1  # devstack's inference worker: TRAINYARD_WORKER_CPUS=1
CLASSIFIER = {"task": "classifier", "max_steps": 150, "name": "bench inference classifier"}
GAN = {
    "task": "gan",
    "model": "conv_gan",
    "max_steps": 40,
    "sample_every": 40,
    "batch_size": 32,
    "name": "bench inference gan",
}


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def timed(call: Callable[[], object], n: int) -> list[float]:
    """Seconds of each of `n` sequential calls."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def line(name: str, api: list[float], local: list[float]) -> str:
    a50, a99, l50, l99 = pct(api, 50), pct(api, 99), pct(local, 50), pct(local, 99)
    return (
        f"  {name:<22} API p50 {a50 * 1000:7.1f} ms  p99 {a99 * 1000:7.1f} ms   "
        f"in-process p50 {l50 * 1000:7.1f} ms  p99 {l99 * 1000:7.1f} ms   "
        f"ratio p50 {a50 / l50:5.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="single-image predicts")
    parser.add_argument("--batches", type=int, default=5, help="1,024-image predicts")
    parser.add_argument("--samples", type=int, default=30, help="samples requests of n=64")
    args = parser.parse_args()
    torch.set_num_threads(INFERENCE_THREADS)

    data = load_dataset("mnist-5k")
    digit = data.test_x[0, 0].numpy()
    png = io.BytesIO()
    Image.fromarray(digit).save(png, format="png")
    one = png.getvalue()
    x = np.concatenate([data.test_x.numpy(), data.train_x.numpy()])[:BATCH]  # (1024, 1, 28, 28)
    npz = io.BytesIO()
    np.savez(npz, x=x)
    batch = npz.getvalue()

    with (
        local_stack(overrides={"TRAINYARD_QUALITY": "false"}) as stack,
        Client(stack.config.api_url, stack.config.api_token, timeout=120) as api,
    ):
        clf = api.wait(api.submit(CLASSIFIER).id, timeout=900)
        gan = api.wait(api.submit(GAN).id, timeout=900)
        for job in (clf, gan):
            assert job.status.value == "succeeded", job.error
        settings: Settings = stack.config.settings()
        store = S3ArtifactStore.from_settings(settings, retry_s=0)
        local = InferenceService(store, settings.INFERENCE_CACHE_BYTES, torch.device("cpu"))
        image = (1, 28, 28)

        def local_predict(body: bytes) -> list[int]:
            xs = parse_predict_input(
                "x",
                body,
                image,
                settings.INFERENCE_MAX_IMAGES,
                settings.PREDICT_MAX_BYTES,
                settings.PREDICT_DECODED_MAX_BYTES,
            )
            answer = local.predict(clf.id, xs.tobytes(), list(xs.shape), "final", clf.step)
            predicted: list[int] = answer["predicted"]
            return predicted

        def local_sample(seed: int) -> None:
            local.sample(gan.id, 64, None, seed, "final", gan.step)

        # Warm both sides: models loaded and cached, code paths run once.
        for _ in range(10):
            api.predict(clf.id, one)
            local_predict(one)
        api.predict(clf.id, batch)
        local_predict(batch)
        api.sample(gan.id, n=64, seed=0)
        local_sample(0)
        # Both sides answer the same.
        remote = api.predict(clf.id, batch).predicted
        assert remote == local_predict(batch), "the API and the in-process model disagree"
        accuracy = float(np.mean(np.array(remote[:1000]) == data.test_y.numpy()))

        # Interleaved rounds: each side's calls in turn, so load drifts hit both alike.
        one_api: list[float] = []
        one_local: list[float] = []
        rounds = 10
        for _ in range(rounds):
            one_api += timed(lambda: api.predict(clf.id, one), args.requests // rounds)
            one_local += timed(lambda: local_predict(one), args.requests // rounds)
        batch_api, batch_local = [], []
        for _ in range(args.batches):
            batch_api += timed(lambda: api.predict(clf.id, batch), 1)
            batch_local += timed(lambda: local_predict(batch), 1)
        sample_api, sample_local = [], []
        for seed in range(1, args.samples + 1):
            t0 = time.perf_counter()
            api.sample(gan.id, n=64, seed=seed)
            sample_api.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            local_sample(seed)
            sample_local.append(time.perf_counter() - t0)

    rate_api = BATCH / statistics.median(batch_api)
    rate_local = BATCH / statistics.median(batch_local)
    held_out = clf.result["metrics"]["test_accuracy"] if clf.result else float("nan")
    print(
        f"book_cnn ({CLASSIFIER['max_steps']} steps, held-out accuracy {held_out:.4f}; "
        f"the 1,000 test digits through the API: {accuracy:.4f}) and conv_gan "
        f"({GAN['max_steps']} steps) on mnist-5k; CPU, {INFERENCE_THREADS} torch thread each side"
    )
    print(line(f"predict 1 image x{len(one_api)}", one_api, one_local))
    print(line(f"samples n=64 x{len(sample_api)}", sample_api, sample_local))
    print(
        f"  predict {BATCH:,}-image npz  API {rate_api:,.0f} images/s   in-process "
        f"{rate_local:,.0f} images/s   (median of {args.batches}; "
        f"ratio {rate_api / rate_local:.2f})"
    )


if __name__ == "__main__":
    main()
