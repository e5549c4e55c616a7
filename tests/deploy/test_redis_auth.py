"""The Redis password, end to end on a real redis-server.

The exact command docker-compose.yml and the Kubernetes StatefulSet give Redis runs here (with
the port and data folder moved): Redis must refuse clients without the password, keep it out
of every process's arguments, answer its own health check, and accept the URL the API and
workers are given."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from shared.config import Settings, connect_redis
from tests.deploy.helpers import (
    DEPLOY,
    OVERLAY_IDS,
    OVERLAYS,
    compose_env,
    container,
    find,
    interpolate,
    kustomize,
    pod_env,
    secret_examples,
)

Obj = dict[str, Any]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def at(url: str, port: int) -> str:
    """The app's Redis URL, pointed at this test's server (password and database kept)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[0] + f"@127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


class RedisUnderTest:
    """A redis-server started with a deployment's own command line and environment."""

    def __init__(self, argv: list[str], env: dict[str, str], data: Path) -> None:
        assert shutil.which("redis-server"), "redis-server is missing (make installs it)"
        self.port = free_port()
        self.data = data
        self.env = {"PATH": os.environ["PATH"], **env}
        # The data folder moves here (`--dir`, else the working directory, as in the image);
        # port and address are added where the deployment's own flags go: the script's "$@".
        argv = list(argv)
        if "--dir" in argv:
            argv[argv.index("--dir") + 1] = str(data)
        self.proc = subprocess.Popen(
            [*argv, "--port", str(self.port), "--bind", "127.0.0.1"],
            cwd=data,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=2).ping()
            except redis.AuthenticationError:
                return  # up, and asking for the password
            except redis.ConnectionError:
                assert self.proc.poll() is None, self.output()
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
            else:
                raise AssertionError("Redis answered without a password")

    def output(self) -> str:
        self.proc.kill()
        out, _ = self.proc.communicate(timeout=10)
        return out.decode(errors="replace")

    def shell(self, command: str, **env: str) -> subprocess.CompletedProcess[str]:
        """A shell command as the container runs it, its redis-cli pointed at this port (the
        real redis-cli, through a two-line wrapper first on PATH)."""
        wrappers = self.data / "bin"
        wrappers.mkdir(exist_ok=True)
        cli = wrappers / "redis-cli"
        real = shutil.which("redis-cli")
        assert real, "redis-cli is missing (make installs redis)"
        cli.write_text(f'#!/bin/sh\nexec {real} -p {self.port} "$@"\n')
        cli.chmod(0o755)
        return subprocess.run(
            ["/bin/sh", "-c", command],
            env={**self.env, "PATH": f"{wrappers}:{self.env['PATH']}", **env},
            capture_output=True,
            text=True,
            timeout=30,
        )

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=30)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    started: list[RedisUnderTest] = []

    def run(argv: list[str], env: dict[str, str]) -> RedisUnderTest:
        server = RedisUnderTest(argv, env, tmp_path)
        started.append(server)
        return server

    yield run
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=10)


def check(server: RedisUnderTest, password: str, client_urls: dict[str, str]) -> None:
    # Whatever the script ran, the process is now redis-server itself (`exec`): it gets the
    # container's SIGTERM, and its arguments never held the password.
    assert Path(f"/proc/{server.proc.pid}/comm").read_text().strip() == "redis-server"
    cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().decode()
    assert password not in cmdline
    assert (
        password not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    )
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=server.port, password="wrong-password").ping()
    for name, url in client_urls.items():
        client = connect_redis(Settings(_env_file=None, REDIS_URL=at(url, server.port)))
        assert client.ping(), name
        client.close()


def test_compose_redis_requires_the_password(
    start: Any, compose_raw: Obj, env_example: dict[str, str]
) -> None:
    services = interpolate(compose_raw, env_example)["services"]
    redis_service = services["redis"]
    env = compose_env(redis_service)
    password = env_example["REDIS_PASSWORD"]
    assert env["REDIS_PASSWORD"] == env["REDISCLI_AUTH"] == password
    server = start(redis_service["command"], env)
    clients = {
        name: compose_env(services[name])["TRAINYARD_REDIS_URL"]
        for name in ("api", "worker", "worker-cpu", "planner", "inference")
    }
    clients["flower"] = compose_env(services["flower"])["CELERY_BROKER_URL"]
    check(server, password, clients)
    # The healthcheck passes with the container's REDISCLI_AUTH, and fails without it.
    kind, health = redis_service["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    assert server.shell(health).returncode == 0
    assert server.shell(health, REDISCLI_AUTH="wrong-password").returncode != 0
    assert server.stop() == 0


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_kubernetes_redis_requires_the_password(start: Any, overlay: str) -> None:
    objects = kustomize(DEPLOY / "overlays" / overlay)
    secrets = secret_examples()
    password = secrets["trainyard-redis"]["password"]
    ctr = container(find(objects, "StatefulSet", "redis"), "redis")
    env = pod_env(objects, ctr, secrets)
    server = start([*ctr["command"], *ctr["args"]], env)
    clients = {
        name: pod_env(objects, container(find(objects, "Deployment", name), name), secrets)[
            "TRAINYARD_REDIS_URL"
        ]
        for name in ("api", "worker", "planner", "inference")
    }
    check(server, password, clients)
    probe = ctr["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["sh", "-c"]
    assert server.shell(probe[2]).returncode == 0
    assert server.shell(probe[2], REDISCLI_AUTH="wrong-password").returncode != 0
    assert server.stop() == 0
