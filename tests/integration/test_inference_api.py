"""Using trained models over the real stack (the API, a training worker, the inference worker,
Redis, SeaweedFS): samples from GAN jobs, predictions of classifier jobs, the poll URL, owner
isolation and hostile input. No mocks.

A stack of its own: a generous INFERENCE_WAIT_S (a shared 2-core machine trains beside these
tests), a small PREDICT_MAX_BYTES (the 413 without sending 32 MiB), and, for one test, the
API restarted with INFERENCE_WAIT_S=0."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from redis import Redis

from devstack.stack import Stack, StackConfig
from shared.auth import new_token
from shared.schemas import JobSummary, PredictionsPublic, SamplesPublic
from shared.state.inference import InferenceAnswer, InferenceRequests
from shared.status import JobStatus
from shared.storage import JobKeys, S3ArtifactStore
from tests.conftest import wait_for
from tests.integration.test_front_door import _body_bytes_read, _chunked, _exchange, _head
from tests.stack_plugin import running_stack
from tests.unit.test_datasets import lying_npz
from trainyard.client import Client
from workers.trainer import reference
from workers.trainer.data import load_dataset
from workers.trainer.models import build_model

USERS = {name: new_token() for name in ("alice", "bob")}
PREDICT_LIMIT = 2 * 2**20
QUALITY_SAMPLES = 200  # as the session stack (tests/integration/conftest.py)
CLASSIFIER: dict[str, Any] = {"task": "classifier", "max_steps": 300, "dataset": "mnist-5k"}
GAN: dict[str, Any] = {"task": "gan", "max_steps": 60, "sample_every": 30, "checkpoint_every": 30}
# A conditional GAN long enough to follow its labels: the fast recipe (lr 2e-3), 400 steps,
# scored at 200 and 400.
CGAN: dict[str, Any] = {
    "task": "cgan",
    "model": "conv_cgan",
    "max_steps": 400,
    "sample_every": 200,
    "checkpoint_every": 200,
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    overrides = {
        "TRAINYARD_INFERENCE_WAIT_S": "60",
        "TRAINYARD_PREDICT_MAX_BYTES": str(PREDICT_LIMIT),
        "TRAINYARD_QUALITY_SAMPLES": str(QUALITY_SAMPLES),
        "TRAINYARD_PLAN_WAIT_S": "20",
        "TRAINYARD_API_TOKENS": ",".join(f"{name}:{token}" for name, token in USERS.items()),
    }
    root = Path(tmp_path_factory.mktemp("inference"))
    config = StackConfig.fresh(root, workers=1, preferred=False, overrides=overrides)
    with running_stack(config) as stack:
        yield stack


@pytest.fixture(scope="module")
def users(stack: Stack) -> Iterator[dict[str, Client]]:
    clients = {name: Client(stack.config.api_url, token) for name, token in USERS.items()}
    yield clients
    for c in clients.values():
        c.close()


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[dict[str, httpx.Client]]:
    clients = {
        name: httpx.Client(
            base_url=stack.config.api_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )
        for name, token in USERS.items()
    }
    yield clients
    for c in clients.values():
        c.close()


@pytest.fixture(scope="module")
def s3(stack: Stack) -> S3ArtifactStore:
    return S3ArtifactStore.from_settings(stack.config.settings())


@pytest.fixture(scope="module")
def redis(stack: Stack) -> Redis:
    return stack.redis_client()


def _train(client: Client, spec: dict[str, Any]) -> str:
    job = client.wait(client.submit(spec).id, timeout=900)
    assert job.status is JobStatus.SUCCEEDED, job.error
    return job.id


@pytest.fixture(scope="module")
def classifier(users: dict[str, Client]) -> str:
    return _train(users["alice"], CLASSIFIER)


@pytest.fixture(scope="module")
def gan(users: dict[str, Client]) -> str:
    return _train(users["alice"], GAN)


@pytest.fixture(scope="module")
def cgan(users: dict[str, Client]) -> str:
    return _train(users["alice"], CGAN)


def answered(http: httpx.Client, response: httpx.Response, timeout: float = 120) -> httpx.Response:
    """`response`, or what its poll URL answers once it is not a 202."""
    deadline = time.monotonic() + timeout
    while response.status_code == 202:
        assert time.monotonic() < deadline, "no answer in time"
        time.sleep(0.2)
        response = http.get(response.json()["poll"])
    return response


def samples(http: httpx.Client, job_id: str, **body: Any) -> httpx.Response:
    return answered(http, http.post(f"/v1/jobs/{job_id}/samples", json=body))


def predict(
    http: httpx.Client, job_id: str, data: bytes, name: str = "x.npz", **params: Any
) -> httpx.Response:
    files = {"file": (name, data, "application/octet-stream")}
    return answered(http, http.post(f"/v1/jobs/{job_id}/predict", files=files, params=params))


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def on_demand(s3: S3ArtifactStore, job_id: str) -> list[str]:
    return [o.key for o in s3.list_prefix(JobKeys(job_id).on_demand(""))]


def inference_keys(redis: Redis) -> list[bytes]:
    return sorted(redis.scan_iter("trainyard:infer:*"))


# --- samples


def test_samples_are_reproducible_by_seed_and_stored_as_artifacts(
    http: dict[str, httpx.Client], gan: str, s3: S3ArtifactStore
) -> None:
    alice = http["alice"]
    first = samples(alice, gan, n=20, seed=3)
    assert first.status_code == 200, first.text
    body = SamplesPublic.model_validate(first.json())
    assert (body.job_id, body.checkpoint, body.step, body.seed, body.n) == (gan, "final", 60, 3, 20)
    assert body.labels is None and body.images.shape == (20, 1, 28, 28)
    for link in (body.grid, body.images):
        assert link.key.startswith(f"jobs/{gan}/samples-on-demand/")
        assert link.path == link.key.removeprefix(f"jobs/{gan}/")
    npz_bytes = httpx.get(body.images.url).content
    assert npz_bytes == s3.get_bytes(body.images.key)
    with np.load(io.BytesIO(npz_bytes)) as arrays:
        assert arrays["images"].shape == (20, 1, 28, 28) and arrays["images"].dtype == np.uint8
        assert arrays["images"].std() > 0  # images, not a blank
    grid = Image.open(io.BytesIO(alice.get(f"/v1/jobs/{gan}/artifacts/{body.grid.path}").content))
    assert grid.format == "PNG" and grid.size == (8 * 30 + 2, 3 * 30 + 2)

    again = SamplesPublic.model_validate(samples(alice, gan, n=20, seed=3).json())
    assert again.images.key == body.images.key and again.grid.key == body.grid.key
    assert s3.get_bytes(again.images.key) == npz_bytes  # the same bytes
    other = SamplesPublic.model_validate(samples(alice, gan, n=20, seed=4).json())
    assert other.images.key != body.images.key
    assert s3.get_bytes(other.images.key) != npz_bytes


def test_samples_from_best_final_and_a_step(
    http: dict[str, httpx.Client], gan: str, users: dict[str, Client]
) -> None:
    alice = http["alice"]
    summary = JobSummary.model_validate(users["alice"].get(gan).result)
    assert summary.best is not None
    best = SamplesPublic.model_validate(samples(alice, gan, n=4, checkpoint="best").json())
    assert (best.checkpoint, best.step) == ("best", summary.best.step)
    step = SamplesPublic.model_validate(samples(alice, gan, n=4, checkpoint=30).json())
    assert (step.checkpoint, step.step) == (30, 30)
    final = SamplesPublic.model_validate(samples(alice, gan, n=4).json())
    assert len({best.images.key, step.images.key, final.images.key}) == 3
    missing = alice.post(f"/v1/jobs/{gan}/samples", json={"n": 4, "checkpoint": 31})
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "checkpoint"


def test_samples_refusals_name_their_field_and_store_nothing(
    http: dict[str, httpx.Client], gan: str, cgan: str, classifier: str, s3: S3ArtifactStore,
    redis: Redis,
) -> None:  # fmt: skip
    alice = http["alice"]
    before = (on_demand(s3, gan), on_demand(s3, cgan), inference_keys(redis))
    cases: list[tuple[str, dict[str, Any], int, str | None]] = [
        (gan, {"n": 1025}, 422, "n"),
        (gan, {"n": 0}, 422, "n"),
        (gan, {"n": 2, "labels": [1]}, 422, "labels"),  # labels on an unconditional GAN
        (cgan, {"n": 2, "labels": [10]}, 422, "labels"),  # out of range: 10 classes
        (cgan, {"n": 3, "labels": [1, 2]}, 422, "labels"),  # neither 1 nor n
        (cgan, {"n": 2, "labels": [-1]}, 422, "labels"),
        (gan, {"seed": -1}, 422, "seed"),
        (gan, {"checkpoint": "latest"}, 422, "checkpoint"),
        (gan, {"extra": 1}, 422, "extra"),
        (classifier, {"n": 2}, 422, "job_id"),  # a classifier draws no samples
        ("0123456789abcdef", {"n": 2}, 404, None),
    ]
    for job_id, body, status, field in cases:
        r = alice.post(f"/v1/jobs/{job_id}/samples", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"].get("field") == field, (body, r.text)
    assert (on_demand(s3, gan), on_demand(s3, cgan), inference_keys(redis)) == before


def test_a_cgans_samples_follow_the_label_at_least_as_well_as_it_reported(
    http: dict[str, httpx.Client], cgan: str, users: dict[str, Client], s3: S3ArtifactStore
) -> None:
    """Samples for label 3, classified by mnist-5k's reference classifier (the one the job's
    scores used), are named 3 at least as often as the job's reported label agreement (all
    labels, QUALITY_SAMPLES samples), as issue 18 asks. Training and sampling are seeded, so
    the figures repeat: 0.779 for label 3 against 0.690 reported when this was written."""
    summary = JobSummary.model_validate(users["alice"].get(cgan).result)
    reported = summary.metrics["label_agreement"]
    body = SamplesPublic.model_validate(
        samples(http["alice"], cgan, n=1000, labels=[3], seed=11).json()
    )
    assert body.labels == [3] * 1000
    with np.load(io.BytesIO(s3.get_bytes(body.images.key))) as arrays:
        images, labels = arrays["images"], arrays["labels"]
    assert (labels == 3).all()
    ref = reference.load(s3, "mnist-5k")
    assert ref is not None, "the job's scores trained and stored the reference"
    named = ref.probabilities(torch.from_numpy(images).float() / 255).argmax(1)
    agreement = (named == 3).float().mean().item()
    print(f"label 3 agreement {agreement:.3f}; the job reported {reported:.3f} over all labels")
    assert agreement >= reported
    assert agreement > 0.5  # far above chance (0.1): the label is followed
    cycled = SamplesPublic.model_validate(samples(http["alice"], cgan, n=12).json())
    assert cycled.labels == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


# --- predict


def _test_split() -> tuple[np.ndarray, np.ndarray]:
    data = load_dataset("mnist-5k")
    return data.test_x.numpy(), data.test_y.numpy()


def test_predict_gives_the_jobs_accuracy(
    http: dict[str, httpx.Client], classifier: str, users: dict[str, Client], s3: S3ArtifactStore
) -> None:
    """The whole test split (1,000 digits, one npz) gives the job's reported accuracy (within
    0.02; it is the same model on the same images: equal but for ties); the first 100 give
    what the job's own model, downloaded, gives on those 100. That is the fair comparison:
    100 digits alone are within 0.02 of the 1,000's figure only by luck (the first 100 of
    mnist-5k's test split scored 1.00 against 0.96 over all 1,000 in one run)."""
    alice = http["alice"]
    x, y = _test_split()
    reported = JobSummary.model_validate(users["alice"].get(classifier).result).metrics[
        "test_accuracy"
    ]
    whole = PredictionsPublic.model_validate(predict(alice, classifier, npz(images=x)).json())
    assert whole.classes == [str(i) for i in range(10)]
    assert abs(float(np.mean(np.array(whole.predicted) == y)) - reported) <= 0.02
    probs = np.array(whole.probabilities)
    assert probs.shape == (1000, 10) and np.allclose(probs.sum(1), 1)
    assert whole.predicted == probs.argmax(1).tolist()

    first = PredictionsPublic.model_validate(predict(alice, classifier, npz(x=x[:100])).json())
    assert first.predicted == whole.predicted[:100]
    saved = torch.load(io.BytesIO(s3.get_bytes(JobKeys(classifier).final_model)), weights_only=True)
    model = build_model(saved["model_name"])
    model.load_state_dict(saved["state_dict"])
    with torch.no_grad():
        own = model.eval()(torch.from_numpy(x[:100]).float() / 255).argmax(1).numpy()
    accuracy = float(np.mean(np.array(first.predicted) == y[:100]))
    assert accuracy == pytest.approx(float(np.mean(own == y[:100])), abs=0.02)
    print(f"accuracy: first 100 {accuracy:.3f}, all 1,000 reported {reported:.4f}")

    one = PredictionsPublic.model_validate(
        predict(alice, classifier, png(x[0, 0]), name="digit.png").json()
    )
    assert one.predicted == [whole.predicted[0]]
    assert one.predicted_class == [str(whole.predicted[0])]
    assert np.allclose(one.probabilities[0], whole.probabilities[0])
    best = predict(alice, classifier, npz(x=x[:5]), checkpoint="best")
    assert best.status_code in (200, 404), best.text  # a classifier keeps best.pt when scored
    stepped = predict(alice, classifier, npz(x=x[:5]), checkpoint="7")
    assert stepped.status_code == 404 and stepped.json()["error"]["field"] == "checkpoint"


def test_predict_refusals_name_file_and_store_nothing(
    http: dict[str, httpx.Client], classifier: str, gan: str, redis: Redis
) -> None:
    alice = http["alice"]
    x, _ = _test_split()
    noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    bomb = io.BytesIO()
    np.savez_compressed(bomb, x=np.zeros((1024, 1024, 1024), np.uint8))  # ~1 MB -> 1 GiB
    before = inference_keys(redis)
    cases: list[tuple[str, bytes, int, str | None]] = [
        (classifier, b"not an image at all", 422, "file"),
        (classifier, png(noise)[:300], 422, "file"),  # a truncated PNG
        (classifier, bomb.getvalue(), 413, "file"),  # refused on its .npy header
        (classifier, lying_npz(), 413, "file"),
        (classifier, npz(x=np.zeros((2, 3, 28, 28), np.uint8)), 422, "file"),  # wrong shape
        (classifier, npz(x=np.zeros((1025, 28, 28), np.uint8)), 422, "file"),
        (classifier, npz(x=x[:2].astype(np.float32)), 422, "file"),
        (classifier, b"\0" * (PREDICT_LIMIT + 1), 413, None),
        (gan, npz(x=x[:2]), 422, "job_id"),  # a GAN classifies nothing
    ]
    for job_id, data, status, field in cases:
        r = alice.post(f"/v1/jobs/{job_id}/predict", files={"file": ("f", data)})
        assert r.status_code == status, (status, r.text)
        assert r.json()["error"].get("field") == field, r.text
    r = alice.post(f"/v1/jobs/{classifier}/predict", files={"other": ("f", png(noise))})
    assert r.status_code == 422 and r.json()["error"]["field"] == "file"
    two = [("file", ("a.png", png(noise))), ("file", ("b.png", png(noise)))]
    r = alice.post(f"/v1/jobs/{classifier}/predict", files=two)  # Starlette's own 400
    assert r.status_code == 400 and r.json()["error"]["field"] == "file", r.text
    extra = {"note": (None, b"hi")}
    r = alice.post(f"/v1/jobs/{classifier}/predict", files={"file": ("f", png(noise)), **extra})
    assert r.status_code == 422 and r.json()["error"]["field"] == "file", r.text
    r = alice.post(f"/v1/jobs/{classifier}/predict", json={"file": "x"})
    assert r.status_code == 415
    assert inference_keys(redis) == before


def test_a_prediction_is_answered_while_a_long_job_trains(
    http: dict[str, httpx.Client], classifier: str, users: dict[str, Client]
) -> None:
    """The one training worker is busy for minutes; the inference worker answers anyway."""
    alice = users["alice"]
    long = alice.submit({"task": "classifier", "epochs": 500, "name": "long"})
    try:
        deadline = time.monotonic() + 120
        while alice.get(long.id).status is not JobStatus.RUNNING:
            assert time.monotonic() < deadline, "the long job did not start"
            time.sleep(0.5)
        x, _ = _test_split()
        started = time.monotonic()
        r = http["alice"].post(
            f"/v1/jobs/{classifier}/predict", files={"file": ("d.png", png(x[1, 0]))}
        )
        assert r.status_code == 200, r.text  # within INFERENCE_WAIT_S, no poll needed
        print(f"answered in {time.monotonic() - started:.2f} s while a job trains")
        assert alice.get(long.id).status is JobStatus.RUNNING
    finally:
        alice.cancel(long.id)


# --- owners, and the poll URL


def test_another_owner_gets_404_everywhere(
    http: dict[str, httpx.Client], gan: str, classifier: str
) -> None:
    bob = http["bob"]
    r = bob.post(f"/v1/jobs/{gan}/samples", json={"n": 2})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = bob.post(f"/v1/jobs/{classifier}/predict", files={"file": ("f", b"x")})
    assert r.status_code == 404


def test_with_no_wait_the_answer_comes_by_polling(
    stack: Stack, http: dict[str, httpx.Client], gan: str, classifier: str
) -> None:
    """INFERENCE_WAIT_S=0: every request is a 202 with its poll URL; polling gives the 200
    the request would have given, and only to its owner."""
    kept = stack.api.env["TRAINYARD_INFERENCE_WAIT_S"]
    stack.api.env["TRAINYARD_INFERENCE_WAIT_S"] = "0"
    stack.restart(stack.api, stack.ready)
    try:
        alice, bob = http["alice"], http["bob"]
        r = alice.post(f"/v1/jobs/{gan}/samples", json={"n": 3, "seed": 5})
        assert r.status_code == 202, r.text
        pending = r.json()
        assert pending["status"] == "pending"
        assert r.headers["Location"] == pending["poll"] == f"/v1/inference/{pending['request_id']}"
        assert bob.get(pending["poll"]).status_code == 404
        done = answered(alice, r)
        assert done.status_code == 200
        assert SamplesPublic.model_validate(done.json()).n == 3
        assert alice.get(pending["poll"]).json() == done.json()  # kept: the same answer
        assert bob.get(pending["poll"]).status_code == 404

        x, _ = _test_split()
        r = alice.post(f"/v1/jobs/{classifier}/predict", files={"file": ("f", npz(x=x[:3]))})
        assert r.status_code == 202
        assert len(PredictionsPublic.model_validate(answered(alice, r).json()).predicted) == 3
        assert alice.get("/v1/inference/" + "0" * 32).status_code == 404
        assert alice.get("/v1/inference/nope").status_code == 422
    finally:
        stack.api.env["TRAINYARD_INFERENCE_WAIT_S"] = kept
        stack.restart(stack.api, stack.ready)


# --- hardening: parse slots, the decoded cap, a request no worker answers

PREDICT_ROUTE = "/v1/jobs/{job_id}/predict"
FORM = "multipart/form-data; boundary=h18boundary"


def _file_part(data: bytes) -> bytes:
    start = (
        b'--h18boundary\r\nContent-Disposition: form-data; name="file"; filename="x.npz"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    return start + data


def test_predict_bodies_beyond_the_slots_are_refused_before_they_are_read(
    stack: Stack, http: dict[str, httpx.Client], classifier: str, redis: Redis
) -> None:
    """PREDICT_PARSE_CONCURRENCY predict bodies are read and decoded at once per API process
    (the slot taken after the job checks, before the body is read, as uploads'): predicts
    held open by slow clients hold at most that many. One more waits UPLOAD_PARSE_WAIT_S,
    then is a 503 with Retry-After, having read nothing and queued nothing."""
    settings = stack.config.settings()
    slots, path = settings.PREDICT_PARSE_CONCURRENCY, f"/v1/jobs/{classifier}/predict"
    token, route = USERS["alice"], PREDICT_ROUTE
    start = _file_part(b"PK\x03\x04" + b"\0" * 4092)
    before, keys = _body_bytes_read(stack, route), inference_keys(redis)
    held = []
    try:
        for _ in range(slots):  # predicts whose bodies never end: each holds a slot
            s = socket.create_connection(("127.0.0.1", stack.config.api_port), 20)
            s.sendall(_head(stack, path, token, FORM, None) + next(_chunked(iter([start]))))
            held.append(s)
        wait_for(
            lambda: _body_bytes_read(stack, route) - before == slots * len(start),
            20,
            "the held predicts to be read as far as they were sent",
        )
        reading = _body_bytes_read(stack, route)
        body = _file_part(b"not an image\r\n--h18boundary--\r\n")
        answer = _exchange(stack, _head(stack, path, token, FORM, len(body)), [body])
        assert answer.status == 503, answer.body[:300]
        assert "retry-after: 5" in answer.head.lower()
        assert b"TRAINYARD_PREDICT_PARSE_CONCURRENCY" in answer.body
        assert _body_bytes_read(stack, route) == reading  # nothing of it was read
    finally:
        for s in held:
            s.close()
    assert inference_keys(redis) == keys
    x, _ = _test_split()  # the slots are given back when their clients go
    wait_for(
        lambda: predict(http["alice"], classifier, npz(x=x[:2])).status_code == 200,
        20,
        "the predict slots to be free again",
    )


@contextmanager
def _api_with(stack: Stack, **env: str) -> Iterator[None]:
    """The API restarted with `env` (TRAINYARD_ names without the prefix), then as it was.
    Ready is /readyz alone: the test may have stopped a worker."""
    kept = {k: stack.api.env.get(f"TRAINYARD_{k}") for k in env}

    def restart(values: dict[str, str | None]) -> None:
        for k, v in values.items():
            if v is None:
                stack.api.env.pop(f"TRAINYARD_{k}", None)
            else:
                stack.api.env[f"TRAINYARD_{k}"] = v
        stack.restart(stack.api, lambda: httpx.get(f"{stack.config.api_url}/readyz").is_success)

    restart(dict(env))
    try:
        yield
    finally:
        restart(kept)


def test_a_batch_decoding_past_predict_decoded_max_bytes_is_a_413_before_decoding(
    stack: Stack, http: dict[str, httpx.Client], classifier: str, redis: Redis
) -> None:
    """PREDICT_DECODED_MAX_BYTES bounds what one predict request holds (and puts in Redis):
    N x C x H x W is read from the .npy header, a batch over it is a 413 naming `file` with
    the numbers, and nothing is queued or stored."""
    x, _ = _test_split()
    with _api_with(stack, PREDICT_DECODED_MAX_BYTES="100000"):
        before = inference_keys(redis)
        r = http["alice"].post(
            f"/v1/jobs/{classifier}/predict", files={"file": ("f.npz", npz(x=x[:200]))}
        )
        assert r.status_code == 413, r.text
        error = r.json()["error"]
        assert error["field"] == "file", error
        assert "156928 bytes" in error["message"], error  # 200 x 28 x 28 + the .npy header
        assert "the limit is 100000 bytes" in error["message"]
        assert inference_keys(redis) == before
        ok = predict(http["alice"], classifier, npz(x=x[:100]))  # 78,400 bytes: within
        assert ok.status_code == 200, ok.text


def test_a_request_no_inference_worker_answers_is_a_504_and_stays_one(
    stack: Stack, http: dict[str, httpx.Client], classifier: str, gan: str, redis: Redis
) -> None:
    """With no inference worker running, a request is pending until INFERENCE_TIMEOUT_S after
    it was queued, then a 504 in the one error shape: on the poll URL (a 202 first), and on
    the POST itself when it waits that long. Its images had a TTL meanwhile and leave Redis
    then. A late answer does not replace the 504, and a worker that comes back later finds
    the requests answered and skips them: each is answered once."""
    alice = http["alice"]
    x, _ = _test_split()
    ttl = stack.config.settings().INFERENCE_RESULT_TTL_S
    stack.inference.stop()
    try:
        with _api_with(stack, INFERENCE_TIMEOUT_S="3", INFERENCE_WAIT_S="0.5"):
            started = time.monotonic()
            r = alice.post(
                f"/v1/jobs/{classifier}/predict", files={"file": ("f.npz", npz(x=x[:3]))}
            )
            assert r.status_code == 202, r.text
            request_id, poll = r.json()["request_id"], r.json()["poll"]
            images_key = f"trainyard:infer:{request_id}:input"
            assert 0 < redis.ttl(images_key) <= ttl  # a dead worker cannot leave them forever
            late = answered(alice, r, timeout=30)
            assert late.status_code == 504, late.text
            assert time.monotonic() - started >= 3
            error = late.json()["error"]
            assert error["code"] == "timeout", error
            assert error["message"].startswith(
                "no inference worker answered within 3 s; is one running?"
            )
            assert error["message"].endswith("retry")
            assert not redis.exists(images_key)
            assert alice.get(poll).status_code == 504  # a definite answer
            requests = InferenceRequests(redis, "trainyard", ttl)  # as the worker answers
            assert not requests.answer(request_id, InferenceAnswer(status=200, result={}))
            assert alice.get(poll).status_code == 504
        with _api_with(stack, INFERENCE_TIMEOUT_S="2", INFERENCE_WAIT_S="10"):
            started = time.monotonic()
            r = alice.post(f"/v1/jobs/{gan}/samples", json={"n": 2})
            assert r.status_code == 504, r.text  # the POST's wait ends at the timeout
            assert 2 <= time.monotonic() - started < 10
            assert "no inference worker answered within 2 s" in r.json()["error"]["message"]
    finally:
        stack.inference.start()
    wait_for(stack.workers_online, 120, "the inference worker to come back")
    # It takes the queued requests in order: once a new one is answered, the old ones were
    # seen, and skipped as answered.
    fresh = predict(alice, classifier, npz(x=x[:1]))
    assert fresh.status_code == 200, fresh.text
    assert alice.get(poll).status_code == 504
    assert stack.inference.log_file.read_text().count("answered already, skipped") >= 2
