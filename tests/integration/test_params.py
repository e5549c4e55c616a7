"""Request parameters and the OpenAPI document, on the real stack.

Every path, query and header parameter is validated by the pattern or bounds the document
declares (a 422 naming it), before a route builds a Redis or S3 key from it: a crafted job id
is the same 422 whoever owns its prefix, never a 500, and never reaches Redis. The document says
what the routes answer: `Allow` on a 405, the artifact route's content types, errors as JSON.
Job specs are strict (no bool or string coercion) and every 422 names its field."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from redis import Redis

from devstack.stack import Stack
from shared.status import JobStatus
from tests.integration.conftest import USERS
from trainyard.client import Client

UNKNOWN_JOB = "0123456789abcdef"  # well formed, no such job
SUFFIXES = [":events", ":leases", ":fence", ":control"]  # keys beside a job's hash
JOB_ROUTES = [
    ("GET", "/v1/jobs/{id}"),
    ("GET", "/v1/jobs/{id}/metrics"),
    ("GET", "/v1/jobs/{id}/events"),
    ("GET", "/v1/jobs/{id}/artifacts"),
    ("GET", "/v1/jobs/{id}/artifacts/summary.json"),
    ("POST", "/v1/jobs/{id}/cancel"),
]


def _as(stack: Stack, user: str) -> httpx.Client:
    return httpx.Client(
        base_url=stack.config.api_url,
        headers={"Authorization": f"Bearer {USERS[user]}"},
        timeout=30,
    )


@pytest.fixture(scope="module")
def alice(stack: Stack) -> Iterator[httpx.Client]:
    with _as(stack, "alice") as c:
        yield c


@pytest.fixture(scope="module")
def bob(stack: Stack) -> Iterator[httpx.Client]:
    with _as(stack, "bob") as c:
        yield c


@pytest.fixture(scope="module")
def document(stack: Stack) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{stack.config.api_url}/openapi.json").json()
    return document


@pytest.fixture(scope="module")
def finished_job(as_user: dict[str, Client]) -> str:
    """A succeeded job of alice's: its hash, events stream, lease log and fence are in Redis,
    its artifacts in S3."""
    client = as_user["alice"]
    job = client.submit({"task": "classifier", "max_steps": 2, "log_every": 1})
    done = client.wait(job.id, timeout=180)
    assert done.status is JobStatus.SUCCEEDED, done.error
    return job.id


def _request(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    if path.endswith("/events"):  # SSE: a good id streams; only the status line matters here
        with client.stream(method, path, **kwargs) as response:
            if response.status_code != 200:
                response.read()
            return response
    return client.request(method, path, **kwargs)


# --- item 5: crafted ids


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_crafted_job_id_is_the_same_422_whoever_owns_its_prefix(
    suffix: str, finished_job: str, alice: httpx.Client, bob: httpx.Client
) -> None:
    """`<alice's job id>:events` read the events stream as a hash: a 500 (WRONGTYPE), while an
    unknown id was a 404, so the 500 told bob that alice's id exists."""
    answers = []
    for client, prefix in [(bob, finished_job), (alice, finished_job), (bob, UNKNOWN_JOB)]:
        for method, route in JOB_ROUTES:
            response = _request(client, method, route.format(id=prefix + suffix))
            assert response.status_code == 422, (route, response.text)
            error = response.json()["error"]
            assert error["code"] == "validation_error" and error["field"] == "job_id"
            answers.append((route, response.json()))
    per_prefix = len(JOB_ROUTES)
    assert answers[:per_prefix] == answers[per_prefix : 2 * per_prefix] == answers[2 * per_prefix :]
    # Well formed: a job bob may not see is the same 404 as no job at all.
    for method, route in JOB_ROUTES:
        for job_id in (UNKNOWN_JOB, finished_job):
            response = _request(bob, method, route.format(id=job_id))
            assert response.status_code == 404, response.text
            error = response.json()["error"]
            assert error == {"code": "not_found", "message": f"no job {job_id!r}"}


def test_no_request_reaches_redis_with_a_key_it_did_not_build(
    stack: Stack, redis: Redis, bob: httpx.Client
) -> None:
    """Redis's MONITOR sees every command while crafted ids, keys and paths are sent to every
    route: none of them may appear in a command."""
    marker = "zq" + uuid.uuid4().hex[:6]  # not hex: never part of a key the API builds
    crafted = [
        *[(m, r.format(id=f"{UNKNOWN_JOB}{s}{marker}")) for m, r in JOB_ROUTES for s in SUFFIXES],
        *[(m, r.format(id=marker)) for m, r in JOB_ROUTES],
        ("GET", f"/v1/datasets/ds-{marker}"),
        ("GET", f"/v1/datasets/ds-0123456789abcdef:{marker}"),
        ("GET", f"/v1/jobs/{UNKNOWN_JOB}/artifacts/{marker}/..%2f..%2fx"),
    ]
    seen: list[str] = []
    end = f"end-of-probe-{marker}"
    ready = threading.Event()

    def watch() -> None:
        with stack.redis_client().monitor() as monitor:
            ready.set()
            while end not in (command := monitor.next_command()["command"]):
                seen.append(command)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert ready.wait(10)
    # What MONITOR sees first, as proof that it watches: the crafted requests should cause no
    # command at all, and background traffic is not certain within the probe.
    start = f"start-of-probe-{uuid.uuid4().hex}"
    redis.echo(start)
    for method, path in crafted:
        assert _request(bob, method, path).status_code == 422, path
    bad_key = bob.post(
        "/v1/jobs",
        json={"task": "classifier", "max_steps": 1},
        headers={"Idempotency-Key": f"two words {marker}"},
    )
    assert bad_key.status_code == 422 and bad_key.json()["error"]["field"] == "idempotency-key"
    redis.echo(end)
    watcher.join(15)
    assert not watcher.is_alive()
    assert any(start in command for command in seen), "MONITOR did not watch"
    assert not [c for c in seen if marker in c]


@pytest.mark.parametrize("stream_id", ["\u0663-\u0660", "1-\uff10"])
def test_a_stream_id_redis_would_refuse_is_a_422(
    stream_id: str, finished_job: str, alice: httpx.Client
) -> None:
    """`\\d` matched any Unicode digit ("٣"), and XRANGE/XREAD refused the id: a 500."""
    metrics = alice.get(f"/v1/jobs/{finished_job}/metrics", params={"after": stream_id})
    assert metrics.status_code == 422 and metrics.json()["error"]["field"] == "after"
    events = _request(
        alice,
        "GET",
        f"/v1/jobs/{finished_job}/events",
        headers={b"Last-Event-ID": stream_id.encode()},
    )
    assert events.status_code == 422 and events.json()["error"]["field"] == "last-event-id"


# --- item 6: parameters documented, and anything they document accepted


def _parameters(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                yield f"{method.upper()} {path} {parameter['name']}", parameter


def test_every_parameter_is_bounded_by_the_document(document: dict[str, Any]) -> None:
    """A string parameter has a pattern or an enum, a number both bounds; none is nullable
    (HTTP has no null parameter: a client sending `?cursor=null` followed the document)."""
    for where, parameter in _parameters(document):
        schema = parameter["schema"]
        assert "anyOf" not in schema, where
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            schema = document["components"]["schemas"][name]
        if schema["type"] == "string":
            assert "pattern" in schema or "enum" in schema, where
        else:
            assert schema["type"] == "integer", where
            assert "minimum" in schema and "maximum" in schema, where


def _param(document: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    operations = document["paths"][path].values()
    found: dict[str, Any] = next(
        p for o in operations for p in o.get("parameters", []) if p["name"] == name
    )
    return found


def test_every_cursor_of_the_documented_form_is_accepted(
    document: dict[str, Any], stack: Stack, as_user: dict[str, Client]
) -> None:
    pattern = re.compile(_param(document, "/v1/jobs", "cursor")["schema"]["pattern"])
    fuzz = as_user["fuzz"]  # its jobs are the fuzzer's playground; cancelled at once here
    for i in range(3):
        fuzz.cancel(fuzz.submit({"task": "classifier", "max_steps": 1, "seed": i}).id)
    first = fuzz.list_jobs(limit=2)
    assert first.next_cursor and pattern.fullmatch(first.next_cursor)
    for cursor in [first.next_cursor, "0-0000000000000000", "9999999999999999999-ffffffffffffffff"]:
        assert pattern.fullmatch(cursor)
        fuzz.list_jobs(limit=2, cursor=cursor)  # no ApiError
    assert fuzz.list_jobs(limit=2, cursor="0-0000000000000000").data == []
    with _as(stack, "fuzz") as http:
        for cursor in ["garbage!", "MTc6YWJj", "1-" + "f" * 17, "1-abc\n"]:
            response = http.get("/v1/jobs", params={"cursor": cursor})
            assert response.status_code == 422, cursor
            assert response.json()["error"]["field"] == "cursor"


def test_an_idempotency_key_outside_the_pattern_is_a_422_and_stores_nothing(
    document: dict[str, Any], bob: httpx.Client, redis: Redis
) -> None:
    assert "pattern" in _param(document, "/v1/jobs", "idempotency-key")["schema"]
    before = bob.get("/v1/jobs").json()["count"]
    for key in ["two words", "tab\tkey", "é-key", "k" * 201]:
        response = bob.post(
            "/v1/jobs",
            json={"task": "classifier", "max_steps": 1},
            headers={b"Idempotency-Key": key.encode()},
        )
        assert response.status_code == 422, (key, response.text)
        assert response.json()["error"]["field"] == "idempotency-key"
    assert bob.get("/v1/jobs").json()["count"] == before
    assert not list(redis.scan_iter(match="*:idem:bob:*two*"))


def test_artifact_paths_follow_the_documented_pattern(
    document: dict[str, Any], finished_job: str, alice: httpx.Client
) -> None:
    schema = _param(document, "/v1/jobs/{job_id}/artifacts/{path}", "path")["schema"]
    pattern = re.compile(schema["pattern"])
    base = f"/v1/jobs/{finished_job}/artifacts/"
    for path in ["no/such-thing.bin", "x", "a_b/c-d/e.f.g"]:  # valid: missing, so 404 JSON
        assert pattern.fullmatch(path)
        response = alice.get(base + path)
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/json"
    for path in ["..%2fsecret", ".hidden", "a//b", "a/%2E/b", "caf%C3%A9.txt", "a%00b"]:
        response = alice.get(base + path)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["error"]["field"] == "path"


def test_the_artifact_route_documents_what_it_serves(
    document: dict[str, Any], finished_job: str, alice: httpx.Client, as_user: dict[str, Client]
) -> None:
    """It was documented as application/octet-stream only, and served JSON, PNG and text."""
    responses = document["paths"]["/v1/jobs/{job_id}/artifacts/{path}"]["get"]["responses"]
    documented = set(responses["200"]["content"])
    served = set()
    for artifact in as_user["alice"].artifacts(finished_job):
        response = alice.get(f"/v1/jobs/{finished_job}/artifacts/{artifact.path}")
        assert response.status_code == 200
        served.add(response.headers["content-type"].split(";")[0])
    assert {"application/json", "application/octet-stream"} <= served <= documented
    for status in ("4XX", "5XX"):
        assert set(responses[status]["content"]) == {"application/json"}


def test_every_405_says_what_is_allowed(document: dict[str, Any], stack: Stack) -> None:
    """`Allow` lists exactly the documented methods of the path (Starlette's named only the
    first route matching it: OPTIONS /v1/jobs said `Allow: POST`)."""
    values = {
        "job_id": UNKNOWN_JOB,
        "dataset_id": "ds-0123456789abcdef",
        "path": "a/b.json",
        "request_id": "0" * 32,
        "sweep_id": "sw-0123456789abcdef",
    }
    token = {"Authorization": f"Bearer {USERS['fuzz']}"}
    for path, operations in document["paths"].items():
        url = stack.config.api_url + path.format(**values)
        documented = {m.upper() for m in operations}
        for method in {"OPTIONS", "PUT", "PATCH", "DELETE", "POST", "GET"} - documented:
            response = httpx.request(method, url, headers=token)
            assert response.status_code == 405, (method, path)
            assert set(response.headers["allow"].split(", ")) - {"HEAD"} == documented
            assert response.json()["error"]["code"] == "method_not_allowed"


# --- item 6: strict specs, and every 422 names its field


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", True),
        ("epochs", "3"),
        ("batch_size", 8.0),
        ("max_steps", True),
        ("lr", "0.01"),
        ("lr", True),
        ("amp", 1),
        ("compile", "false"),
        ("crop", [True, 20]),
    ],
)
def test_a_spec_value_of_the_wrong_json_type_is_a_422_naming_it(
    field: str, value: Any, bob: httpx.Client
) -> None:
    """`"epochs": true` was a job of 1 epoch."""
    before = bob.get("/v1/jobs").json()["count"]
    response = bob.post("/v1/jobs", json={"task": "classifier", "max_steps": 1, field: value})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field
    assert bob.get("/v1/jobs").json()["count"] == before


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"task": "classifier", "mode": "book", "batch_size": 4}, "batch_size"),
        ({"task": "classifier", "mode": "book", "lr": 0.5}, "lr"),
        ({"task": "gan", "mode": "book", "channels_last": True}, "channels_last"),
        ({"task": "gan", "activation": "gelu"}, "activation"),
    ],
)
def test_a_cross_field_422_names_its_field(
    spec: dict[str, Any], field: str, bob: httpx.Client
) -> None:
    """Book-mode and other cross-field rules answered `field: null`."""
    response = bob.post("/v1/jobs", json=spec)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and error["details"][0]["field"] == field
    assert error["message"].startswith(f"{field}: ")
    assert not error["message"].startswith(f"{field}: {field}")
