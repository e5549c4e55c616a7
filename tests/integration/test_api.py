"""The API as strangers use it: auth and isolation on every route, idempotency, cursors,
SSE with resume, artifact streaming and path checks, limits, pending reasons, metrics, logs."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest

from devstack.stack import Stack
from shared.schemas import JobEvent
from shared.state.heartbeats import WorkerRegistry
from shared.status import JobStatus
from tests.conftest import wait_for
from tests.integration.conftest import QUEUE_CAP, USERS
from trainyard.client import ApiError, Client

TINY = {"task": "classifier", "max_steps": 30, "log_every": 5, "checkpoint_every": 10}


@pytest.fixture(scope="module")
def alice_job(as_user: dict[str, Client]) -> str:
    alice = as_user["alice"]
    job = alice.wait(alice.submit(TINY).id, timeout=180)
    assert job.status is JobStatus.SUCCEEDED, job.error
    return job.id


@pytest.fixture(scope="module")
def alice_dataset(as_user: dict[str, Client], tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ds") / "tiny.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), y=np.arange(20) % 10)
    return as_user["alice"].upload_dataset(path, name="alice's").id


UNKNOWN_REQUEST = "0" * 32  # an inference request id nobody made
# One trial of TINY: a valid sweep, so what is left to check is who asks.
SWEEP = {
    "base": TINY,
    "space": {"lr": {"type": "choice", "values": [1e-3]}},
    "n_trials": 1,
    "sampler": "random",
}


@pytest.fixture(scope="module")
def alice_sweep(as_user: dict[str, Client]) -> str:
    return as_user["alice"].submit_sweep(SWEEP).id


_buf = io.BytesIO()
np.savez(_buf, x=np.zeros((1, 28, 28), np.uint8))
DIGIT_NPZ = _buf.getvalue()
# The owner's answer where it is not a plain 200 here: alice_job is a succeeded classifier, so
# it draws no samples (422 naming job_id) and predicts (200, or 202 past INFERENCE_WAIT_S).
OWNER_EXPECTS = {
    ("POST", "/v1/jobs/{job_id}/samples"): {422},
    ("POST", "/v1/jobs/{job_id}/predict"): {200, 202},
}


def _routes(stack: Stack) -> list[tuple[str, str]]:
    """Every /v1 operation in the live OpenAPI document: new routes are covered by default."""
    paths = httpx.get(f"{stack.config.api_url}/openapi.json").json()["paths"]
    return [(m.upper(), p) for p, ops in paths.items() if p.startswith("/v1") for m in ops]


def _call(
    stack: Stack,
    method: str,
    path: str,
    token: str | None,
    job: str,
    dataset: str,
    sweep: str,
) -> httpx.Response:
    url = stack.config.api_url + path.format(
        job_id=job,
        dataset_id=dataset,
        sweep_id=sweep,
        path="summary.json",
        request_id=UNKNOWN_REQUEST,
    )
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    kwargs: dict[str, Any] = {}
    if path == "/v1/jobs" and method == "POST":
        kwargs["json"] = TINY
    if path == "/v1/sweeps" and method == "POST":
        kwargs["json"] = SWEEP
    if path.endswith("/samples"):
        kwargs["json"] = {"n": 1}  # a valid body: what is left to check is the job
    if path.endswith("/predict"):
        kwargs["files"] = {"file": ("digit.npz", DIGIT_NPZ)}
    if path == "/v1/datasets" and method == "POST":
        kwargs["files"] = {"files": ("x.npz", b"not an npz")}
    if path.endswith("/events"):  # SSE: only the status line matters here
        with httpx.stream(method, url, headers=headers, timeout=30) as response:
            if response.status_code >= 400:
                response.read()
            return response
    return httpx.request(method, url, headers=headers, timeout=30, **kwargs)


@dataclass
class Who:
    name: str
    token: str | None
    expect: set[int]  # acceptable statuses for a route of another owner's object


def test_every_route_enforces_auth_and_isolation(
    stack: Stack, alice_job: str, alice_dataset: str, alice_sweep: str
) -> None:
    cases = [
        Who("no token", None, {401}),
        Who("bad token", "ty_not-a-real-token", {401}),
        Who("other owner", USERS["bob"], {404}),
        Who("admin", USERS["root"], {200, 201, 400}),  # 400: the deliberately bad upload
        Who("owner", USERS["alice"], {200, 201, 400}),
    ]
    routes = _routes(stack)
    assert len(routes) >= 10
    for method, path in routes:
        own_object = any(f"{{{name}}}" in path for name in ("job_id", "dataset_id", "sweep_id"))
        for who in cases:
            response = _call(stack, method, path, who.token, alice_job, alice_dataset, alice_sweep)
            allowed = (
                who.expect
                if own_object or who.token is None or who.name == "bad token"
                else {200, 201, 400}
            )
            if who.name in ("owner", "admin") and (method, path) in OWNER_EXPECTS:
                allowed = OWNER_EXPECTS[method, path]
            if "{request_id}" in path and who.name in ("owner", "admin", "other owner"):
                allowed = {404}  # an unknown request, to everyone (test_inference_api: real ones)
            if (
                method == "POST"
                and path.endswith("/cancel")
                and who.expect != {404}
                and who.token
                and who.name != "bad token"
            ):
                allowed = allowed | {409}  # the job already finished
            assert response.status_code in allowed, (who.name, method, path, response.text)
            if response.status_code >= 400:
                error = response.json()["error"]
                assert error["code"] and error["message"], response.text
            if response.status_code == 401:
                assert response.headers["www-authenticate"] == "Bearer"


def test_lists_show_only_your_own(
    as_user: dict[str, Client], alice_job: str, alice_dataset: str
) -> None:
    bob, root = as_user["bob"], as_user["root"]
    assert alice_job not in {j.id for j in bob.iter_jobs()}
    assert alice_job in {j.id for j in root.iter_jobs()}
    assert alice_dataset not in {d.id for d in bob.datasets()}
    assert alice_dataset in {d.id for d in as_user["alice"].datasets()}
    with pytest.raises(ApiError) as info:  # bob cannot train on alice's upload
        bob.submit({**TINY, "dataset": alice_dataset})
    assert info.value.status_code == 422 and info.value.field == "dataset"


def test_idempotency_key(as_user: dict[str, Client], http: httpx.Client) -> None:
    alice = as_user["alice"]
    key = "retry-me-123"
    first = http.post(
        "/v1/jobs",
        json=TINY,
        headers={"Idempotency-Key": key, "Authorization": f"Bearer {USERS['alice']}"},
    )
    again = http.post(
        "/v1/jobs",
        json=TINY,
        headers={"Idempotency-Key": key, "Authorization": f"Bearer {USERS['alice']}"},
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    other = http.post(
        "/v1/jobs",
        json={**TINY, "max_steps": 31},
        headers={"Idempotency-Key": key, "Authorization": f"Bearer {USERS['alice']}"},
    )
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    # keys are per owner: bob's same key is a new job
    bobs = as_user["bob"].submit(TINY, idempotency_key=key)
    assert bobs.id != first.json()["id"]
    alice.wait(first.json()["id"], timeout=180)
    as_user["bob"].wait(bobs.id, timeout=180)


def test_cursor_pages_filter_and_never_repeat(as_user: dict[str, Client]) -> None:
    dana = as_user["dana"]  # no other test submits as dana
    ids = [dana.submit({**TINY, "max_steps": 1, "seed": i}).id for i in range(7)]
    gan = dana.submit({"task": "gan", "max_steps": 1, "batch_size": 8}).id
    seen: list[str] = []
    cursor = None
    while True:
        page = dana.list_jobs(limit=3, cursor=cursor)
        seen += [j.id for j in page.data]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [gan, *ids[::-1]]  # newest first, each once
    assert [j.id for j in dana.list_jobs(task="gan").data] == [gan]
    for job_id in [*ids, gan]:
        dana.wait(job_id, timeout=240)
    done = [j.id for j in dana.list_jobs(status="succeeded", limit=200).data]
    assert set(done) == {*ids, gan}
    with pytest.raises(ApiError) as info:
        dana.list_jobs(cursor="garbage!")
    assert info.value.status_code == 422 and info.value.field == "cursor"


def test_sse_resumes_without_gaps_or_duplicates(client: Client) -> None:
    job = client.wait(client.submit({**TINY, "log_every": 1}).id, timeout=180)
    everything = client.metrics(job.id)
    assert len(everything) > 20
    first_half: list[JobEvent] = []
    for event in client.events(job.id):  # disconnects when we stop reading
        first_half.append(event)
        if len(first_half) == len(everything) // 2:
            break
    rest = list(client.events(job.id, last_event_id=first_half[-1].id))
    union = first_half + rest
    assert [e.id for e in union] == [e.id for e in everything]
    assert union[-1].kind == "status" and union[-1].info["status"] == "succeeded"  # then closed


@pytest.mark.parametrize("after", ["1-18446744073709551616", "93086-809548131564425501144210303"])
def test_a_stream_id_beyond_64_bits_is_a_422_not_a_500(http: httpx.Client, after: str) -> None:
    # Found by the fuzzer: Redis refuses such an id, which surfaced as a 500.
    job_id = http.post("/v1/jobs", json={**TINY, "max_steps": 1}).json()["id"]
    r = http.get(f"/v1/jobs/{job_id}/metrics", params={"after": after})
    assert r.status_code == 422 and r.json()["error"]["field"] == "after"
    r = http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": after})
    assert r.status_code == 422


def test_sse_streams_live_until_the_end(client: Client) -> None:
    job = client.submit({**TINY, "max_steps": 300, "batch_size": 1, "log_every": 10})
    received: list[JobEvent] = []
    reader = threading.Thread(target=lambda: received.extend(client.events(job.id)), daemon=True)
    reader.start()
    reader.join(timeout=180)
    assert not reader.is_alive(), "the stream did not close after the terminal event"
    assert [e.step for e in received if e.kind == "step"][-1] == 300
    assert received[-1].info["status"] == "succeeded"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("summary.json", 200),
        ("final/model.pt", 200),
        ("..%2f..%2fsecret", 422),
        ("%2e%2e/%2e%2e/jobs/x/summary.json", 422),
        ("samples/%2e%2e/summary.json", 422),  # raw ../ is resolved by the client itself
        ("%2Fetc%2Fpasswd", 422),
        ("nope.bin", 404),
    ],
)
def test_artifacts_stream_through_the_api_with_safe_paths(
    path: str, status: int, alice_job: str, as_user: dict[str, Client], stack: Stack
) -> None:
    url = f"{stack.config.api_url}/v1/jobs/{alice_job}/artifacts/{path}"
    response = httpx.get(url, headers={"Authorization": f"Bearer {USERS['alice']}"})
    assert response.status_code == status, response.text
    if status == 200:
        presigned = next(a for a in as_user["alice"].artifacts(alice_job) if a.path == path)
        assert response.content == httpx.get(presigned.url).content
        assert response.headers["content-length"] == str(presigned.size)


def test_presigned_urls_expire_within_15_minutes(
    alice_job: str, as_user: dict[str, Client]
) -> None:
    for artifact in as_user["alice"].artifacts(alice_job):
        expires = int(httpx.URL(artifact.url).params["X-Amz-Expires"])
        assert 0 < expires <= 900


def test_download_through_the_api(
    alice_job: str, as_user: dict[str, Client], tmp_path: Any
) -> None:
    saved = as_user["alice"].download(alice_job, tmp_path, through_api=True)
    assert {p.name for p in saved} >= {"model.pt", "summary.json", "memory.json"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["job_id"] == alice_job


def test_oversize_json_is_413_and_stores_nothing(http: httpx.Client, client: Client) -> None:
    before = [j.id for j in client.list_jobs(limit=5).data]
    body = json.dumps({**TINY, "name": "x" * 70_000})
    response = http.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must still hold
        yield body[:40_000].encode()
        yield body[40_000:].encode()

    chunked = http.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    assert [j.id for j in client.list_jobs(limit=5).data] == before


def test_queue_cap_per_owner_is_a_clear_429(as_user: dict[str, Client], client: Client) -> None:
    carol = as_user["carol"]
    finished = client.wait(client.submit({**TINY, "max_steps": 1}).id, timeout=120)
    assert finished.status is JobStatus.SUCCEEDED  # a recent duration, for the ETA below
    blocker = client.submit({**TINY, "max_steps": 2000, "batch_size": 1})  # keeps the worker busy
    wait_for(lambda: client.get(blocker.id).status is JobStatus.RUNNING, 60, "blocker running")
    queued = [carol.submit({**TINY, "seed": i}).id for i in range(QUEUE_CAP)]
    with pytest.raises(ApiError) as info:
        carol.submit(TINY)
    assert info.value.status_code == 429 and f"limit is {QUEUE_CAP}" in info.value.message
    assert (
        as_user["alice"].submit({**TINY, "max_steps": 1}).status is JobStatus.QUEUED
    )  # others not

    # why is it pending: position, workers, reason (the API's view of the workers may be up
    # to WorkerRegistry.CACHE_S old: the blocker started less than that ago)
    def seen_busy() -> bool:
        pending = carol.get(queued[-1]).pending
        return pending is not None and pending.workers_busy == 1

    wait_for(seen_busy, 5 * WorkerRegistry.CACHE_S, "the API to see the worker busy")
    last = carol.get(queued[-1])
    assert last.pending is not None and last.pending.workers_online == 1
    assert last.pending.workers_busy == 1 and last.pending.queue_position is not None
    assert last.pending.queue_position >= QUEUE_CAP and "busy" in last.pending.reason
    assert last.pending.eta_s is not None and last.pending.eta_s > 0  # finished jobs' median
    for job_id in queued:
        carol.cancel(job_id)
    client.cancel(blocker.id)
    assert carol.submit({**TINY, "max_steps": 1}).status is JobStatus.QUEUED  # room again


def test_metrics_endpoint_is_open_and_counts(stack: Stack, alice_job: str) -> None:
    text = httpx.get(f"{stack.config.api_url}/metrics").text
    for name in (
        "trainyard_jobs_submitted_total",
        'trainyard_jobs_finished_total{status="succeeded"}',
        "trainyard_queue_depth",
        "trainyard_memory_prediction_abs_error",
        'trainyard_jobs{status="running"}',
        'trainyard_workers{state="idle"}',
        'trainyard_http_request_duration_seconds_bucket{le="0.005",method="GET",'
        'route="/v1/jobs/{job_id}"',
    ):
        assert name in text, name


def test_logs_are_json_and_carry_the_job_id(stack: Stack, alice_job: str) -> None:
    def records(name: str) -> list[dict[str, Any]]:
        lines = (stack.config.root / "logs" / f"{name}.log").read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    api = [r for r in records("api") if r.get("job_id") == alice_job]
    assert any(r["logger"] == "trainyard.access" and r["status"] == 200 for r in api)
    worker = [r for r in records("worker-0") if r.get("job_id") == alice_job]
    assert any("job started" in r["message"] for r in worker)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in api + worker)


def test_error_shape_is_documented(stack: Stack) -> None:
    spec = httpx.get(f"{stack.config.api_url}/openapi.json").json()
    assert "ErrorResponse" in spec["components"]["schemas"]
    for path, ops in spec["paths"].items():
        if path.startswith("/v1"):
            for op in ops.values():
                ref = op["responses"]["4XX"]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorResponse"), path
    assert "bearer" in json.dumps(spec["components"]["securitySchemes"]).lower()
