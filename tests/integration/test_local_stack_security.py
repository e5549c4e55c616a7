"""The local stack on a shared host: other users (same loopback, no secrets) can reach none of
its data. SeaweedFS's master, filer and volume servers refuse anonymous HTTP and gRPC while S3
with the stack's keys works; Redis needs its password; every file that holds a secret is 0600
in a 0700 folder, and no secret is on a command line or in a log."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from redis import Redis
from redis.exceptions import AuthenticationError, ResponseError

from devstack.stack import Stack
from shared.config import connect_redis
from shared.storage import S3ArtifactStore

SECRET_FILES = [
    "stack.json",
    "stack.env",
    "s3-identities.json",
    "redis/redis.conf",
    "seaweedfs/security.toml",
    "seaweedfs/grpc.key",
    "seaweedfs/grpc.crt",
    "seaweedfs/grpc-ca.crt",
]
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _secrets(stack: Stack) -> list[str]:
    c = stack.config
    return [c.secret_key, c.api_token, c.redis_password, *c.jwt_keys.values()]


def _jwt(key: str, fid: str) -> str:
    """An HS256 JWT for one SeaweedFS file id, as the master signs them (claims fid, exp)."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"fid": fid, "exp": int(time.time()) + 60}).encode())
    signature = hmac.new(key.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{b64(signature)}"


def test_secret_files_are_readable_by_their_owner_only(stack: Stack) -> None:
    root = stack.config.root
    assert _mode(root) == 0o700
    for name in SECRET_FILES:
        path = root / name
        assert path.stat().st_uid == os.getuid(), name
        assert _mode(path) == 0o600, f"{name} is {oct(_mode(path))}"


def test_make_up_makes_the_stack_folder_private(tmp_path: Path) -> None:
    """`python -m devstack` creates its folder 0700 whatever the umask (here 0o000)."""
    root = tmp_path / "trainyard"
    code = "import os, sys; os.umask(0); from devstack.__main__ import main; sys.exit(main())"
    cwd = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-c", code, "status", "--root", str(root)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "no local stack here" in run.stdout, run.stderr
    assert _mode(root) == 0o700


def test_redis_requires_the_stacks_password(stack: Stack) -> None:
    port = stack.config.redis_port
    with pytest.raises(AuthenticationError):
        Redis(port=port, socket_timeout=5).ping()
    with pytest.raises((AuthenticationError, ResponseError)):
        Redis(port=port, password="not-the-password", socket_timeout=5).ping()
    with pytest.raises(AuthenticationError):
        Redis(port=port, socket_timeout=5).get("trainyard:anything")
    # The stack's clients have it: the fixture's, and what the API and workers build from
    # TRAINYARD_REDIS_URL.
    assert stack.redis_client().ping()
    assert connect_redis(stack.config.settings()).ping()


def test_no_secret_is_on_a_command_line_or_in_a_log(stack: Stack) -> None:
    """`ps` shows every user each process's arguments; the logs sit in the stack's folder."""
    for proc in stack.processes:
        pid = proc.pid()
        assert pid is not None, proc.name
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        log = proc.log_file.read_text(errors="replace")
        for secret in _secrets(stack):
            assert secret not in cmdline, f"{proc.name}'s command line holds a secret"
            assert secret not in log, f"{proc.name}'s log holds a secret"


def test_seaweedfs_http_refuses_anonymous_access(stack: Stack, s3: S3ArtifactStore) -> None:
    """With the S3 keys an object goes in and out; without them, neither the filer's, the
    master's nor the volume server's HTTP lists, reads, writes or hands out write tokens."""
    c = stack.config
    s3.put_bytes("security/secret.txt", b"the secret")
    assert s3.get_bytes("security/secret.txt") == b"the secret"  # S3 with the keys works

    filer = f"http://127.0.0.1:{c.s3_port + 3}"
    master = f"http://127.0.0.1:{c.s3_port + 1}"
    bucket = f"{filer}/buckets/{c.bucket}"
    json_accept = {"Accept": "application/json"}
    with httpx.Client(timeout=10) as anon:
        answers = {
            "filer list": anon.get(f"{bucket}/security/", headers=json_accept),
            "filer read": anon.get(f"{bucket}/security/secret.txt"),
            "filer metadata": anon.get(f"{bucket}/security/secret.txt?metadata=true"),
            "filer write": anon.put(f"{bucket}/security/evil.txt", content=b"evil"),
            "filer upload": anon.post(f"{bucket}/security/", files={"file": ("e.txt", b"evil")}),
            "filer delete": anon.delete(f"{bucket}/security/secret.txt"),
            "master assign": anon.get(f"{master}/dir/assign"),
            "master lookup": anon.get(f"{master}/dir/lookup?volumeId=1"),
            "master volumes": anon.get(f"{master}/vol/status"),
            "master grow": anon.get(f"{master}/vol/grow?count=1"),
        }
    for what, r in answers.items():
        assert r.status_code in (401, 403, 404), f"{what}: {r.status_code} {r.text[:200]}"
        assert "the secret" not in r.text and "fid" not in r.text, what
        assert "authorization" not in r.headers, f"{what} handed out a token"
    # Nothing changed: the object is there, nothing was added.
    assert s3.get_bytes("security/secret.txt") == b"the secret"
    assert not s3.exists("security/evil.txt")
    assert not s3.exists("security/e.txt")


def test_volume_server_needs_a_signed_token_to_read_or_write(stack: Stack) -> None:
    """A needle written with a token signed by the stack's key: read back with a read token;
    without one, neither read nor overwritten nor deleted."""
    c = stack.config
    volume = f"http://127.0.0.1:{c.s3_port + 2}"
    with httpx.Client(timeout=10) as http:
        volumes = http.get(f"{volume}/status").json()["Volumes"]
        vid = next(v["Id"] for v in volumes if not v.get("ReadOnly"))
        fid = f"{vid},{secrets.randbits(31) + 1:x}{secrets.randbits(32):08x}"
        write = {"Authorization": f"Bearer {_jwt(c.jwt_keys['volume_write'], fid)}"}
        read = {"Authorization": f"Bearer {_jwt(c.jwt_keys['volume_read'], fid)}"}
        assert http.post(f"{volume}/{fid}", files={"f": ("a", b"needle")}, headers=write).is_success
        assert http.get(f"{volume}/{fid}", headers=read).content == b"needle"

        anon = [
            http.get(f"{volume}/{fid}"),
            http.get(f"{volume}/{fid}", headers=write),  # the write key does not read
            http.post(f"{volume}/{fid}", files={"f": ("a", b"evil")}),
            http.delete(f"{volume}/{fid}"),
        ]
        assert [r.status_code for r in anon] == [401] * len(anon), [r.text for r in anon]
        assert http.get(f"{volume}/{fid}", headers=read).content == b"needle"


GRPC_PORTS = [("s3", 0), ("master", 1), ("volume", 2), ("filer", 3)]  # offsets from the S3 port


@pytest.mark.parametrize("component,offset", GRPC_PORTS)
def test_seaweedfs_grpc_needs_the_stacks_certificate(
    stack: Stack, component: str, offset: int
) -> None:
    """Every gRPC port (HTTP port + 10000) speaks mutual TLS: plaintext gRPC and TLS without
    the stack's client certificate get no HTTP/2 answer; with it, the server answers."""
    port = stack.config.s3_port + offset + 10000

    def exchange(tls: bool, certificate: bool) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            if not tls:
                raw.sendall(HTTP2_PREFACE)
                return raw.recv(64)
            conf = stack.weed_conf
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.load_verify_locations(conf / "grpc-ca.crt")  # and it is the stack's server
            ctx.set_alpn_protocols(["h2"])
            if certificate:
                ctx.load_cert_chain(conf / "grpc.crt", conf / "grpc.key")
            with ctx.wrap_socket(raw) as s:
                s.sendall(HTTP2_PREFACE)
                return s.recv(64)

    def is_settings_frame(data: bytes) -> bool:  # an HTTP/2 server's first frame
        return len(data) >= 9 and data[3] == 0x04

    assert not is_settings_frame(exchange(tls=False, certificate=False))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        exchange(tls=True, certificate=False)
    assert is_settings_frame(exchange(tls=True, certificate=True))
