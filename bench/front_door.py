"""Time to refuse at the front door (limits.RequestGuard), in a real API process over raw
sockets on loopback, against a baseline: a small authorised `GET /v1/jobs?limit=1`.

    python -m bench.front_door [--n 200]

Each request opens its own connection and is timed from connect to the whole answer read.
The refusals read no body (the declared-length cases send 1 KiB of a 700 MB body), so they
should cost no more than the baseline (ratio <= 1; goal: every refusal under 1 s, however
large the declared body). The chunked upload past the limit is read up to the limit only:
its time is that of receiving UPLOAD_MAX_BYTES. Also prints the API's RSS growth."""

from __future__ import annotations

import argparse
import select
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.stack import local_stack

UPLOAD_LIMIT = 16 * 2**20
BOUNDARY = "benchboundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
FILE_PART = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="big.npz"\r\n'
    "Content-Type: application/octet-stream\r\n\r\n"
).encode()


def request(
    port: int, head: list[str], pieces: Iterator[bytes] | list[bytes] | None = None
) -> tuple[int, float]:
    """(status, seconds) for one request: the head, then the pieces until the server answers."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(("\r\n".join([*head, f"Host: 127.0.0.1:{port}"]) + "\r\n\r\n").encode())
        for piece in pieces or []:
            if select.select([s], [], [], 0)[0]:
                break
            try:
                s.sendall(piece)
            except OSError:
                break
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
                if _complete(data):
                    break
        except ConnectionResetError:
            pass
    return int(data.split()[1]), time.perf_counter() - started


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if sep and name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def chunked_past(limit: int) -> Iterator[bytes]:
    """A chunked multipart body that goes on past `limit`, never finished."""
    yield b"%x\r\n%s\r\n" % (len(FILE_PART), FILE_PART)
    piece = b"\0" * 65536
    for _ in range(limit // len(piece) + 64):
        yield b"%x\r\n%s\r\n" % (len(piece), piece)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(name: str, n: int, expect: int, call: Callable[[], tuple[int, float]]) -> list[float]:
    times = []
    for _ in range(n):
        status, seconds = call()
        assert status == expect, f"{name}: {status}, expected {expect}"
        times.append(seconds)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="requests per case")
    args = parser.parse_args()
    overrides = {"TRAINYARD_UPLOAD_MAX_BYTES": str(UPLOAD_LIMIT)}
    with local_stack(workers=0, overrides=overrides) as stack:
        port, token = stack.config.api_port, stack.config.api_token
        auth = f"Authorization: Bearer {token}"
        pid = stack.api.pid()
        assert pid is not None
        huge = ["Content-Length: 700000000"]
        cases: dict[str, tuple[int, int, Callable[[], tuple[int, float]]]] = {
            "baseline: GET /v1/jobs?limit=1": (
                200,
                args.n,
                lambda: request(port, ["GET /v1/jobs?limit=1 HTTP/1.1", auth]),
            ),
            "no token, multipart, declares 700 MB (401)": (
                401,
                args.n,
                lambda: request(
                    port,
                    ["POST /v1/datasets HTTP/1.1", f"Content-Type: {MULTIPART}", *huge],
                    [FILE_PART + b"\0" * 1024],
                ),
            ),
            "token, multipart, declares 700 MB (413)": (
                413,
                args.n,
                lambda: request(
                    port,
                    ["POST /v1/datasets HTTP/1.1", auth, f"Content-Type: {MULTIPART}", *huge],
                    [FILE_PART + b"\0" * 1024],
                ),
            ),
            "token, multipart on POST /v1/jobs (415)": (
                415,
                args.n,
                lambda: request(
                    port,
                    ["POST /v1/jobs HTTP/1.1", auth, f"Content-Type: {MULTIPART}", *huge],
                    [FILE_PART + b"\0" * 1024],
                ),
            ),
            "token, two Content-Types (400)": (
                400,
                args.n,
                lambda: request(
                    port,
                    [
                        "POST /v1/jobs HTTP/1.1",
                        auth,
                        "Content-Type: application/json",
                        f"Content-Type: {MULTIPART}",
                        "Content-Length: 30000000",
                    ],
                    [b"{" * 1024],
                ),
            ),
            f"token, chunked upload past {UPLOAD_LIMIT >> 20} MiB (413)": (
                413,
                max(args.n // 20, 3),
                lambda: request(
                    port,
                    [
                        "POST /v1/datasets HTTP/1.1",
                        auth,
                        f"Content-Type: {MULTIPART}",
                        "Transfer-Encoding: chunked",
                    ],
                    chunked_past(UPLOAD_LIMIT),
                ),
            ),
        }
        for *_, call in cases.values():  # warm-up: imports, first Redis calls
            for _ in range(3):
                call()
        rss_before = rss_mib(pid)
        results = {
            name: measure(name, n, expect, call) for name, (expect, n, call) in cases.items()
        }
        rss_after = rss_mib(pid)
    base = statistics.median(next(iter(results.values())))
    print(f"API on loopback, one connection per request; UPLOAD_MAX_BYTES {UPLOAD_LIMIT}")
    for name, times in results.items():
        median = statistics.median(times)
        print(
            f"  {name:<46} n={len(times):<4} median {median * 1000:7.2f} ms   "
            f"max {max(times) * 1000:7.1f} ms   x{median / base:5.2f} of baseline"
        )
    slowest = max(max(t) for t in results.values())
    print(f"slowest answer {slowest * 1000:.0f} ms (goal < 1000 ms)")
    print(f"API RSS {rss_before:.0f} -> {rss_after:.0f} MiB ({rss_after - rss_before:+.0f} MiB)")


if __name__ == "__main__":
    main()
