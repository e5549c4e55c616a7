"""The SDK's side of inference without a server: a 202 is followed by polling its `poll` URL
until the answer or the answer's error, and a request that never answers ends in a
TimeoutError naming it. (The real round trip: tests/integration/test_cli.py and the API's
tests/integration/test_inference_api.py.)"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from trainyard.client import ApiError, Client

JOB = "0123456789abcdef"
POLL = "/v1/inference/" + "a" * 32
PENDING = {"request_id": "a" * 32, "status": "pending", "poll": POLL}
PREDICTIONS = {
    "job_id": JOB,
    "checkpoint": "final",
    "step": 150,
    "classes": ["0", "1"],
    "probabilities": [[0.25, 0.75]],
    "predicted": [1],
    "predicted_class": ["1"],
}


def client_with(handler: Callable[[httpx.Request], httpx.Response]) -> Client:
    client = Client("http://trainyard.test", "t0ken")
    client.http = httpx.Client(
        base_url=client.url, headers=client.http.headers, transport=httpx.MockTransport(handler)
    )
    return client


def test_a_202_is_polled_until_the_answer() -> None:
    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        assert request.headers["Authorization"] == "Bearer t0ken"
        if request.method == "POST":
            assert request.url.params["checkpoint"] == "best"
            assert b'name="file"; filename="image.png"' in request.content  # bytes: named by kind
            assert b"Content-Type: image/png" in request.content
            return httpx.Response(202, json=PENDING, headers={"Location": POLL})
        polls = sum(1 for method, _ in seen if method == "GET")
        return (
            httpx.Response(200, json=PREDICTIONS)
            if polls == 3
            else httpx.Response(202, json=PENDING)
        )

    with client_with(handler) as client:
        png = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
        answer = client.predict(JOB, png, checkpoint="best")
    assert answer.predicted_class == ["1"] and answer.probabilities == [[0.25, 0.75]]
    assert seen == [("POST", f"/v1/jobs/{JOB}/predict")] + [("GET", POLL)] * 3


def test_the_answers_error_is_raised_as_the_api_said_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            body = json.loads(request.content)
            assert body == {"n": 4, "seed": 3, "checkpoint": 7, "labels": [2]}
            return httpx.Response(202, json=PENDING)
        problem = {"code": "not_found", "message": "checkpoint: no step 7", "field": "checkpoint"}
        return httpx.Response(404, json={"error": problem})

    with client_with(handler) as client, pytest.raises(ApiError) as raised:
        client.sample(JOB, n=4, labels=2, seed=3, checkpoint=7)
    assert raised.value.status_code == 404 and raised.value.field == "checkpoint"


def test_a_request_that_stays_pending_times_out_naming_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(202, json=PENDING)

    with client_with(handler) as client, pytest.raises(TimeoutError, match=POLL):
        client.sample(JOB, wait_s=0.3)
