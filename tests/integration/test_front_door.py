"""The front door: nothing of a request body is read before its headers, token, media type and
size are checked, for every content type. Requests go over raw sockets (a client library would
hide a server that never answers, and refuses to send some of these requests); what the API
read is its own counter, `trainyard_http_request_body_bytes_total`, from /metrics."""

from __future__ import annotations

import io
import itertools
import os
import select
import socket
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from devstack.stack import Stack
from tests.conftest import wait_for
from tests.integration.conftest import UPLOAD_LIMIT

JSON_LIMIT = 64 * 1024  # TRAINYARD_JSON_BODY_MAX_BYTES's default: the test stack keeps it
HUGE = 700_000_000  # a declared length no route takes
BOUNDARY = "trainyardboundary1234"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
ANSWER_WITHIN_S = 20.0  # a guard against a server that never answers, not a timing assertion
LIMITS = {"/v1/jobs": JSON_LIMIT, "/v1/datasets": UPLOAD_LIMIT}


@dataclass
class Answer:
    status: int
    head: str  # the status line and headers
    body: bytes


def _head(
    stack: Stack,
    path: str,
    token: str | None,
    content_type: str | None,
    length: int | None,
    extra: tuple[str, ...] = (),
) -> bytes:
    """A request head; `length` None means a chunked body."""
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{stack.config.api_port}"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode()


def _exchange(stack: Stack, head: bytes, pieces: Iterator[bytes] | list[bytes]) -> Answer:
    """Send the head, then the pieces until the server answers; read its answer. Fails when
    none comes within ANSWER_WITHIN_S."""
    with socket.create_connection(("127.0.0.1", stack.config.api_port), ANSWER_WITHIN_S) as s:
        _send(s, head, pieces)
        return _read_answer(s)


def _send(s: socket.socket, head: bytes, pieces: Iterator[bytes] | list[bytes]) -> None:
    """Send the head, then the pieces until the server answers or stops reading."""
    s.sendall(head)
    for piece in pieces:
        if select.select([s], [], [], 0)[0]:  # answered: stop sending
            break
        try:
            s.sendall(piece)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            break  # it stopped reading (and closed): its answer is waiting


def _read_answer(s: socket.socket) -> Answer:
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data) < _answer_size(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pytest.fail(f"no answer within {ANSWER_WITHIN_S:.0f} s; got {data[:200]!r}")
    except ConnectionResetError:
        pass  # a reset after the answer: keep what came
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), f"no HTTP answer: {data[:200]!r}"
    return Answer(int(head.split()[1]), head.decode("latin-1"), body)


def _answer_size(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return 1 << 62  # no length: read to the end


def _chunked(payload: Iterator[bytes]) -> Iterator[bytes]:
    for piece in payload:
        yield b"%x\r\n%s\r\n" % (len(piece), piece)


def _body_bytes_read(stack: Stack, route: str) -> float:
    """The API's count of request body bytes handed to POST `route`."""
    text = httpx.get(f"{stack.config.api_url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "trainyard_http_request_body_bytes" in families, "no body byte counter in /metrics"
    return sum(
        s.value
        for s in families["trainyard_http_request_body_bytes"].samples
        if s.name.endswith("_total") and s.labels == {"method": "POST", "route": route}
    )


def _multipart_start(filename: str = "x.npz") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()


def _small_body(path: str, content_type: str | None) -> bytes:
    """A body under the limit: a spec the API refuses (422) or a file it cannot parse (400),
    so nothing is queued or stored."""
    if content_type == MULTIPART:
        return _multipart_start() + b"not an npz\r\n" + f"--{BOUNDARY}--\r\n".encode()
    return b'{"task": "no-such-task"}'


def _endless(path: str, content_type: str | None) -> Iterator[bytes]:
    """A body that never ends: the start of a form or JSON document, then filler."""
    yield _multipart_start("big.npz") if content_type == MULTIPART else b'{"name": "'
    yield from itertools.repeat(b"x" * 65536, (LIMITS[path] >> 16) + 32)


CONTENT_TYPES = {
    "json": "application/json",
    "multipart": MULTIPART,
    "text": "text/plain",
    "none": None,
}
TAKES = {"/v1/jobs": "json", "/v1/datasets": "multipart"}
MEDIA_TYPES = {"/v1/jobs": "application/json", "/v1/datasets": "multipart/form-data"}
UNDER_STATUS = {"/v1/jobs": 422, "/v1/datasets": 400}


@pytest.mark.parametrize("length", ["under", "over", "chunked"])
@pytest.mark.parametrize("token", ["none", "bad", "good"])
@pytest.mark.parametrize("kind", list(CONTENT_TYPES))
@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/datasets"])
def test_body_is_read_only_after_token_type_and_size_pass(
    stack: Stack, path: str, kind: str, token: str, length: str
) -> None:
    content_type = CONTENT_TYPES[kind]
    bearer = {"none": None, "bad": "ty_not-a-real-token", "good": stack.config.api_token}[token]
    small = _small_body(path, content_type)
    pieces: Iterator[bytes] | list[bytes]
    refused = token != "good" or TAKES[path] != kind
    if length == "under":  # whole when it is to be read; else all but its last byte, so
        # a server that reads before it answers waits for that byte and never answers
        sent = small if not refused else small[:-1]
        head, pieces = _head(stack, path, bearer, content_type, len(small)), [sent]
    elif length == "over":  # declares far more than the limit and sends 1 KiB of it
        head, pieces = _head(stack, path, bearer, content_type, HUGE), [small[:1024]]
    else:  # chunked, passing the limit, never finished
        head, pieces = (
            _head(stack, path, bearer, content_type, None),
            _chunked(_endless(path, content_type)),
        )
    before = _body_bytes_read(stack, path)

    answer = _exchange(stack, head, pieces)

    read = _body_bytes_read(stack, path) - before
    if token != "good":
        expected, read_ok = 401, read == 0
        assert "www-authenticate: bearer" in answer.head.lower()
    elif TAKES[path] != kind:
        expected, read_ok = 415, read == 0
        assert MEDIA_TYPES[path] in answer.body.decode()  # names the type it takes
    elif length == "under":
        expected, read_ok = UNDER_STATUS[path], read == len(small)
    elif length == "over":
        expected, read_ok = 413, read == 0
    else:
        expected, read_ok = 413, read <= LIMITS[path]  # answered though never finished
    assert answer.status == expected, answer.body[:300]
    assert read_ok, f"{read} body bytes read"
    assert b'"error"' in answer.body and b'"code"' in answer.body  # the one error shape


@pytest.mark.parametrize("sent", [0, 1024])
@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/datasets"])
def test_no_token_is_answered_before_any_byte_is_read(stack: Stack, path: str, sent: int) -> None:
    """The issue's case: multipart, no token, Content-Length 700000000, 1 KiB (or nothing)
    sent: an answer, not a wait for the rest."""
    before = _body_bytes_read(stack, path)
    answer = _exchange(stack, _head(stack, path, None, MULTIPART, HUGE), [b"x" * sent])
    assert answer.status == 401
    assert _body_bytes_read(stack, path) == before


DUPLICATES = {
    "two Content-Types, JSON first": (
        "Content-Type: application/json",
        "Content-Type: multipart/form-data; boundary=x",
    ),
    "two Content-Types, multipart first": (
        f"Content-Type: {MULTIPART}",
        "Content-Type: application/json",
    ),
    # Differing values: two equal ones are one length (RFC 9112 lets a server accept them).
    "two Content-Lengths": ("Content-Type: application/json", "Content-Length: 29999999"),
    "Content-Length and Transfer-Encoding": (
        "Content-Type: application/json",
        "Transfer-Encoding: chunked",
    ),
    "two Authorization headers": (
        "Content-Type: application/json",
        "Authorization: Bearer ty_not-a-real-token",
    ),
}


@pytest.mark.parametrize("case", list(DUPLICATES))
@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/datasets"])
def test_ambiguous_headers_are_a_400_before_reading(stack: Stack, path: str, case: str) -> None:
    """Two parsers could each take a different header: one JSON parser read a 30 MB body
    that the limit had let through as multipart."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{stack.config.api_port}",
        f"Authorization: Bearer {stack.config.api_token}",
        "Content-Length: 30000000",
        *DUPLICATES[case],
    ]
    before = _body_bytes_read(stack, path)
    answer = _exchange(stack, ("\r\n".join(lines) + "\r\n\r\n").encode(), [b"{" * 1024])
    assert answer.status == 400, answer.body[:300]
    assert _body_bytes_read(stack, path) == before


def _api_temp_files(stack: Stack) -> list[str]:
    """Files the API process has open in its temp dir (spooled upload parts: unnamed, so
    listing the folder would not show them)."""
    pid = stack.api.pid()
    assert pid is not None
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    tmp = next((e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"TMPDIR=")), "/tmp")
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if os.path.dirname(target.removesuffix(" (deleted)")) == tmp.rstrip("/"):
            found.append(target)
    return found


def test_uploads_spool_nothing_unauthenticated_and_nothing_over_the_limit(stack: Stack) -> None:
    """No token: 3 MiB of a file part sent (more than Starlette keeps in memory) on a
    connection held open; nothing may reach the temp dir. With a token, a chunked upload
    over the limit: at most the limit is read, and what was spooled is gone after the 413."""
    path = "/v1/datasets"
    before = _body_bytes_read(stack, path)
    file_part = [_multipart_start("big.npz"), *([b"\0" * 65536] * 48)]
    answer = _exchange(stack, _head(stack, path, None, MULTIPART, 150_000_000), file_part)
    assert answer.status == 401
    assert _api_temp_files(stack) == []
    assert _body_bytes_read(stack, path) == before

    token = stack.config.api_token
    answer = _exchange(
        stack, _head(stack, path, token, MULTIPART, None), _chunked(_endless(path, MULTIPART))
    )
    assert answer.status == 413, answer.body[:300]
    assert 0 < _body_bytes_read(stack, path) - before <= UPLOAD_LIMIT
    wait_for(lambda: _api_temp_files(stack) == [], 10, "the API to close its spooled parts")


def _cp866_zip() -> bytes:
    """A zip of two class folders, "кот" and "пёс", whose names are cp866 bytes without the
    UTF-8 flag (as older Windows tools write them)."""
    png = io.BytesIO()
    Image.new("L", (8, 8), 200).save(png, "PNG")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # ASCII stand-ins of the same byte length
        for folder in ("AAA", "BBB"):
            for i in range(3):
                archive.writestr(f"{folder}/{i}.png", png.getvalue())
    data = buffer.getvalue()
    for stand_in, name in ((b"AAA/", "кот/"), (b"BBB/", "пёс/")):
        data = data.replace(stand_in, name.encode("cp866"))
    return data


def test_an_authenticated_upload_within_the_limit_is_read_with_its_fields(
    stack: Stack, http: httpx.Client
) -> None:
    """The route reads the form itself (after the quota check): files, name and name_encoding
    reach the catalog."""
    before = _body_bytes_read(stack, "/v1/datasets")
    response = http.post(
        "/v1/datasets",
        files=[("files", ("pets.zip", _cp866_zip(), "application/zip"))],
        data={"name": "front door", "name_encoding": "cp866"},
    )
    assert response.status_code == 201, response.text
    found = response.json()
    assert found["name"] == "front door" and sorted(found["classes"]) == ["кот", "пёс"]
    assert _body_bytes_read(stack, "/v1/datasets") - before > 0


CLOSING_CASES = {
    "no token (401)": ("POST", "/v1/datasets", None, MULTIPART, HUGE),
    "declared over the limit (413)": ("POST", "/v1/jobs", "good", "application/json", HUGE),
    "multipart on a JSON route (415)": ("POST", "/v1/jobs", "good", MULTIPART, HUGE),
    "chunked past the limit (413)": ("POST", "/v1/jobs", "good", "application/json", None),
    "a method no route has (405)": ("PUT", "/v1/jobs", "good", "application/json", 1000),
}


@pytest.mark.parametrize("case", list(CLOSING_CASES))
def test_an_answer_before_the_body_is_read_closes_the_connection(stack: Stack, case: str) -> None:
    """Kept open, the server would read (and throw away) the rest of a refused body to find
    the next request: up to 700 MB here. The answer says `Connection: close` and the server
    closes its side."""
    method, path, token, content_type, length = CLOSING_CASES[case]
    bearer = stack.config.api_token if token else None
    head = _head(stack, path, bearer, content_type, length).replace(b"POST ", f"{method} ".encode())
    pieces = _chunked(_endless(path, content_type)) if length is None else [b"{" * 1024]
    with socket.create_connection(("127.0.0.1", stack.config.api_port), ANSWER_WITHIN_S) as s:
        _send(s, head, pieces)
        answer = _read_answer(s)
        assert answer.status >= 400 and "connection: close" in answer.head.lower(), answer.head
        try:
            rest = s.recv(65536)  # EOF once the server has closed its side
        except ConnectionResetError:
            rest = b""
    assert rest == b"", f"the connection stayed open: {rest[:100]!r}"


def test_uploads_beyond_the_slots_are_refused_before_their_bodies_are_read(
    stack: Stack, http: httpx.Client
) -> None:
    """UPLOAD_PARSE_CONCURRENCY uploads are read and parsed at once per API process: the slot
    is taken before the body is read, so uploads held open by slow (or hostile) clients hold
    at most that many bodies in memory. One more waits UPLOAD_PARSE_WAIT_S, then is a 503
    with Retry-After, having read nothing."""
    path, slots = "/v1/datasets", stack.config.settings().UPLOAD_PARSE_CONCURRENCY
    token = stack.config.api_token
    start = _multipart_start("slow.npz") + b"\0" * 4096
    before = _body_bytes_read(stack, path)
    held = []
    try:
        for _ in range(slots):  # uploads whose bodies never end: each holds a slot
            s = socket.create_connection(("127.0.0.1", stack.config.api_port), ANSWER_WITHIN_S)
            s.sendall(_head(stack, path, token, MULTIPART, None) + next(_chunked(iter([start]))))
            held.append(s)
        wait_for(
            lambda: _body_bytes_read(stack, path) - before == slots * len(start),
            ANSWER_WITHIN_S,
            "the held uploads to be read as far as they were sent",
        )
        reading = _body_bytes_read(stack, path)
        body = _small_body(path, MULTIPART)
        answer = _exchange(stack, _head(stack, path, token, MULTIPART, len(body)), [body])
        assert answer.status == 503, answer.body[:300]
        assert "retry-after:" in answer.head.lower()
        assert b"TRAINYARD_UPLOAD_PARSE_CONCURRENCY" in answer.body
        assert _body_bytes_read(stack, path) == reading  # nothing of it was read
    finally:
        for s in held:
            s.close()
    # The held slots are given back when their clients go: an upload is read again.
    wait_for(
        lambda: (
            http.post("/v1/datasets", files={"files": ("x.npz", b"not an npz")}).status_code == 400
        ),
        ANSWER_WITHIN_S,
        "the upload slots to be free again",
    )


@pytest.mark.parametrize("shape", ["one long header", "many headers"])
def test_a_request_head_over_16_kib_is_refused_and_closed(stack: Stack, shape: str) -> None:
    """The API's HTTP parser buffered a head of any size (8 unfinished 100 MiB headers took
    it to 1 GiB, no token needed); it refuses one past 16 KiB with a 4xx and closes. Sends
    1 MiB of head, never finished."""
    line = b"X-Big: " + b"a" * 65536 + b"\r\n" if shape == "one long header" else b"X-A: b\r\n"
    head = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{stack.config.api_port}\r\n".encode()
    with socket.create_connection(("127.0.0.1", stack.config.api_port), ANSWER_WITHIN_S) as s:
        s.sendall(head)
        sent = 0
        while sent < 1 << 20 and not select.select([s], [], [], 0)[0]:
            try:
                s.sendall(line)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(line)
        answer = _read_answer(s)
        try:
            rest = s.recv(65536)
        except ConnectionResetError:
            rest = b""
    assert 400 <= answer.status < 500, answer  # an answer at all: the head never ended
    assert rest == b"", "the connection stayed open"


def test_a_client_that_hangs_up_mid_upload_is_no_server_error(stack: Stack) -> None:
    """An upload whose client disconnects after part of its body: logged as a disconnect,
    nothing stored, never an unhandled error (a 500 in the log)."""
    api_log = stack.api.log_file
    before = api_log.read_text(errors="replace").count("client disconnected during POST")
    head = _head(stack, "/v1/datasets", stack.config.api_token, MULTIPART, UPLOAD_LIMIT // 2)
    part = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; '
    part += 'filename="half.zip"\r\nContent-Type: application/zip\r\n\r\n'
    with socket.create_connection(("127.0.0.1", stack.config.api_port), ANSWER_WITHIN_S) as s:
        s.sendall(head + part.encode() + os.urandom(100_000))
    wait_for(
        lambda: (
            api_log.read_text(errors="replace").count("client disconnected during POST") > before
        ),
        20,
        "the API to notice the disconnect",
    )
    assert "ClientDisconnect" not in api_log.read_text(errors="replace")
