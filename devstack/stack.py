"""Start and stop the local stack's processes; each writes a pid file and a log under root."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
from redis import Redis

from devstack.security import (
    private_dir,
    redis_conf,
    write_private,
    write_seaweedfs_security,
)
from shared.auth import new_token
from shared.broker import inference_queue
from shared.config import Settings
from shared.planning import plan_queue
from shared.storage import S3ArtifactStore
from workers.trainer.cpu import cpu_quota

VENV_BIN = Path(sys.executable).parent


class StackError(RuntimeError):
    pass


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2
) -> None:
    """Poll `predicate` until it returns truthy (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise StackError(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f": {last}" if last else "")
    )


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(preferred: int | None = None, grpc_too: bool = False, span: int = 1) -> int:
    """A free loopback port, with the `span - 1` ports after it free too; SeaweedFS also needs
    each port + 10000 for gRPC."""

    def one(p: int) -> bool:
        return _port_free(p) and (not grpc_too or (p + 10000 < 65536 and _port_free(p + 10000)))

    def ok(p: int) -> bool:
        return all(one(p + i) for i in range(span))

    if preferred and ok(preferred):
        return preferred
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < 55000 and ok(port):
            return port
    raise StackError("no free port found")


@dataclass
class Process:
    """A background service with a pid file and a log file."""

    name: str
    argv: list[str]
    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid_file(self) -> Path:
        return self.root / "pids" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "logs" / f"{self.name}.log"

    def start(self) -> None:
        private_dir(self.pid_file.parent)
        private_dir(self.log_file.parent)
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                start_new_session=True,  # own process group
            )
        self.pid_file.write_text(str(proc.pid))

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        # A zombie child of ours counts as dead.
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        except OSError:
            return True

    def signal(self, sig: int, group: bool = True) -> None:
        """Send `sig` to the process group (the process and its children), or the process
        alone, as Kubernetes signals a container's PID 1."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(OSError):
                (os.killpg if group else os.kill)(pid, sig)

    def wait_exit(self, timeout: float) -> bool:
        """True once the process has exited (reaping it if it is our child)."""
        pid = self.pid()
        deadline = time.monotonic() + timeout
        while pid is not None and self.alive() and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        return not self.alive()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left."""
        pid = self.pid()
        if pid is None:
            return
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        if self.alive():
            self.signal(signal.SIGKILL)
            time.sleep(0.2)
        _reap(pid)
        self.pid_file.unlink(missing_ok=True)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _new_jwt_keys() -> dict[str, str]:
    return {
        k: secrets.token_urlsafe(32)
        for k in ("volume_write", "volume_read", "filer_write", "filer_read")
    }


@dataclass
class StackConfig:
    """A stack's ports and secrets, kept in `root/stack.json` (0600, in a 0700 folder)."""

    root: Path
    redis_port: int
    s3_port: int
    api_port: int
    access_key: str
    secret_key: str
    api_token: str  # the local user "dev"; clients read it from stack.env
    # redis-server's requirepass, and SeaweedFS's JWT signing keys (see devstack.security).
    redis_password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    jwt_keys: dict[str, str] = field(default_factory=_new_jwt_keys)
    bucket: str = "trainyard"
    workers: int = 1
    overrides: dict[str, str] = field(default_factory=dict)  # extra TRAINYARD_* settings
    worker_overrides: list[dict[str, str]] = field(default_factory=list)  # per worker
    # False: workers start without `-n` and name themselves (worker@<host>-<random>), as
    # replicas that share a hostname do.
    named_workers: bool = True

    @classmethod
    def fresh(
        cls,
        root: Path,
        workers: int = 1,
        preferred: bool = True,
        overrides: dict[str, str] | None = None,
        worker_overrides: list[dict[str, str]] | None = None,
    ) -> StackConfig:
        """New credentials and free ports (the usual ones when free and `preferred`)."""
        return cls(
            root=root,
            redis_port=free_port(6379 if preferred else None),
            # S3 on this port; SeaweedFS's master, volume and filer on the next three.
            s3_port=free_port(8333 if preferred else None, grpc_too=True, span=4),
            api_port=free_port(8000 if preferred else None),
            access_key="ty" + secrets.token_hex(8),
            secret_key=secrets.token_urlsafe(24),
            api_token=new_token(),
            workers=workers,
            overrides=overrides or {},
            worker_overrides=worker_overrides or [],
        )

    def save(self) -> None:
        """Write `root/stack.json`, readable by this user only (it holds every secret)."""
        data = {k: v for k, v in asdict(self).items() if k != "root"}
        write_private(private_dir(self.root) / "stack.json", json.dumps(data, indent=2))

    @classmethod
    def load(cls, root: Path) -> StackConfig | None:
        try:
            return cls(root=root, **json.loads((root / "stack.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict[str, str]:
        """TRAINYARD_* settings every process of this stack runs with."""
        return {
            "TRAINYARD_REDIS_URL": (
                f"redis://:{quote(self.redis_password, safe='')}@127.0.0.1:{self.redis_port}/0"
            ),
            "TRAINYARD_S3_ENDPOINT": f"127.0.0.1:{self.s3_port}",
            "TRAINYARD_S3_ACCESS_KEY": self.access_key,
            "TRAINYARD_S3_SECRET_KEY": self.secret_key,
            "TRAINYARD_S3_BUCKET": self.bucket,
            "TRAINYARD_S3_SECURE": "false",
            "TRAINYARD_API_HOST": "127.0.0.1",
            "TRAINYARD_API_PORT": str(self.api_port),
            "TRAINYARD_API_URL": self.api_url,
            "TRAINYARD_DATA_DIR": str(self.root / "data"),
            "TRAINYARD_API_TOKEN": self.api_token,
            **self.overrides,
            # the server's token table: "dev", plus any users the overrides add
            "TRAINYARD_API_TOKENS": ",".join(
                t
                for t in (f"dev:{self.api_token}", self.overrides.get("TRAINYARD_API_TOKENS"))
                if t
            ),
        }

    def settings(self) -> Settings:
        """The Settings every process of this stack sees (ignores any stack.env on disk)."""
        values = {k.removeprefix("TRAINYARD_"): v for k, v in self.env().items()}
        return Settings(_env_file=None, **values)  # type: ignore[arg-type]


class Stack:
    """Redis + SeaweedFS S3 + API + N Celery workers, on loopback, under `config.root`."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        root = config.root
        c = config
        env = c.env()
        redis_dir = root / "redis"
        weed_dir = root / "s3"
        # Secrets live in files (0600), never on a command line `ps` shows.
        self.redis_conf = redis_dir / "redis.conf"
        self.weed_conf = root / "seaweedfs"  # security.toml and the gRPC certificates
        self.redis = Process("redis", [_binary("redis-server"), str(self.redis_conf)], root)
        p = c.s3_port
        self.s3 = Process(
            "s3",
            [
                _binary("weed"),
                f"-config_dir={self.weed_conf}",
                "server",
                # No HTTP API on the master (it hands out volume JWTs) and the filer: S3 and
                # the components' own traffic go over gRPC (mutual TLS) and signed HTTP.
                "-disableHttp",
                f"-dir={weed_dir}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-s3",
                f"-s3.port={p}",
                f"-s3.config={root / 's3-identities.json'}",
                f"-master.port={p + 1}",
                f"-volume.port={p + 2}",
                f"-filer.port={p + 3}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.volumeSizeLimitMB=1024",
                # As many 1 GB volumes as the disk holds (the default, 8, fills up after a
                # few dozen 100 MB checkpoints: each collection grows several volumes at once).
                "-volume.max=0",
                "-master.telemetry=false",
                # A single local master: elect at once and stop promptly, so restarts are quick.
                "-master.electionTimeout=1s",
                "-volume.preStopSeconds=0",
            ],
            root,
        )
        self.api = Process(
            "api",
            [
                str(VENV_BIN / "python"),
                "-m",
                "uvicorn",
                "services.api.main:app",
                # h11 refuses a request head over 16 KiB; httptools buffers one of any size
                # (8 sockets sending 100 MiB headers took the API to 1 GiB), as do deploy/'s.
                "--http",
                "h11",
                "--host",
                "127.0.0.1",
                "--port",
                str(c.api_port),
                "--no-access-log",
            ],
            root,
            env,
        )

        def celery_worker(
            name: str,
            queue: str,
            extra_env: dict[str, str],
            concurrency: int = 1,
            named: bool = True,
        ) -> Process:
            argv = [
                str(VENV_BIN / "python"),
                "-m",
                "celery",
                "-A",
                "workers.trainer.celery_app",
                "worker",
                "-Q",
                queue,
                "--concurrency",
                str(concurrency),
                "--loglevel",
                "INFO",
                *(["-n", f"{name}-{c.api_port}@%h"] if named else []),
                "--without-mingle",
                "--without-gossip",
            ]
            heartbeat = {"TRAINYARD_WORKER_HEARTBEAT_FILE": str(root / f"{name}.heartbeat")}
            return Process(name, argv, root, {**env, **heartbeat, **extra_env})

        queue = c.settings().QUEUE
        # The workers share this machine's cores (each sizes its torch threads to its share,
        # workers/trainer/cpu.py), unless the stack's overrides set TRAINYARD_WORKER_CPUS.
        share = {}
        if c.workers and "TRAINYARD_WORKER_CPUS" not in c.overrides:
            share = {"TRAINYARD_WORKER_CPUS": f"{cpu_quota() / c.workers:g}"}
        self.workers = [
            celery_worker(
                f"worker-{i}",
                queue,
                {**share, **(c.worker_overrides[i] if i < len(c.worker_overrides) else {})},
                named=c.named_workers,
            )
            for i in range(c.workers)
        ]
        # The planner predicts jobs' memory (a CPU probe) for the API; it trains nothing. Two
        # probes at a time: one slow shape does not hold up the next.
        self.planner = celery_worker(
            "planner", plan_queue(queue), {"TRAINYARD_WORKER_ROLE": "planner"}, concurrency=2
        )
        # The inference worker answers samples and predict requests (workers/inference/); it
        # trains nothing and consumes only its own queue, so answers never wait behind a job.
        self.inference = celery_worker(
            "inference",
            inference_queue(queue),
            {"TRAINYARD_WORKER_ROLE": "inference", "TRAINYARD_WORKER_CPUS": "1"},
        )
        self._dirs = (redis_dir, weed_dir)

    @property
    def processes(self) -> list[Process]:
        return [self.redis, self.s3, self.api, self.planner, self.inference, *self.workers]

    def up(self, timeout: float = 90.0) -> None:
        """Start what is not running and wait until the API says it is ready."""
        try:
            self.start_storage()
            self._start(self.api)
            for worker in [self.planner, self.inference, *self.workers]:
                self._start(worker)
            wait_for(self.ready, timeout, "the API's /readyz")
            wait_for(self.workers_online, timeout, "the Celery workers")
        except StackError as exc:
            raise StackError(f"{exc}\n{self.logs()}") from exc
        self.write_env()

    def start_storage(self) -> None:
        """Redis and the S3 server alone (what benchmarks of the storage path need)."""
        for d in (self.config.root, *self._dirs):
            private_dir(d)
        self.config.save()
        identities = {
            "identities": [
                {
                    "name": "trainyard",
                    "credentials": [
                        {"accessKey": self.config.access_key, "secretKey": self.config.secret_key}
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        c = self.config
        write_private(c.root / "s3-identities.json", json.dumps(identities))
        write_private(
            self.redis_conf, redis_conf(c.redis_port, self.redis_conf.parent, c.redis_password)
        )
        if not self.s3.alive():  # new certificates for a new process only
            write_seaweedfs_security(self.weed_conf, c.jwt_keys)
        self._start(self.redis)
        wait_for(self.redis_client().ping, 20, "redis")
        self._start(self.s3)
        # The S3 port opens before the filer is ready: wait for a real round trip.
        wait_for(self.s3_ready, 60, "the S3 server")

    def _start(self, proc: Process) -> None:
        if not proc.alive():
            proc.start()

    def down(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()

    def running(self) -> bool:
        return all(p.alive() for p in self.processes)

    def restart(self, proc: Process, ready: Callable[[], object], timeout: float = 60) -> None:
        """Stop `proc` (SIGTERM, then SIGKILL) and start it again; wait until `ready`."""
        proc.stop()
        proc.start()
        wait_for(ready, timeout, f"{proc.name} to come back")

    def s3_ready(self) -> bool:
        return _s3_round_trip(S3ArtifactStore.from_settings(self.config.settings(), retry_s=0))

    def redis_client(self) -> Redis:
        """A client of the stack's Redis, with its password."""
        return Redis(
            port=self.config.redis_port, password=self.config.redis_password, socket_timeout=5
        )

    def ready(self) -> bool:
        for proc in self.processes:
            if not proc.alive():
                raise StackError(f"{proc.name} exited")
        r = httpx.get(f"{self.config.api_url}/readyz", timeout=5)
        return r.status_code == 200

    def workers_online(self) -> bool:
        """Every worker has consumed from the queue's broker connection (Celery's own ping)."""
        from shared.broker import make_celery

        app = make_celery(self.config.settings())
        replies = app.control.ping(timeout=1.0) or []
        return len(replies) >= len(self.workers) + 2  # and the planner and inference worker

    def write_env(self) -> Path:
        """Write `root/stack.env` (0600: it holds the secrets) and return its path."""
        path = self.config.root / "stack.env"
        return write_private(path, "".join(f"{k}={v}\n" for k, v in self.config.env().items()))

    def logs(self, lines: int = 20) -> str:
        return "\n".join(f"--- {p.name} ({p.log_file})\n{p.tail(lines)}" for p in self.processes)


def _s3_round_trip(store: S3ArtifactStore) -> bool:
    store.ensure_bucket()
    store.put_bytes(".ready", b"ok")
    return store.get_bytes(".ready") == b"ok"


def _binary(name: str) -> str:
    for candidate in (
        VENV_BIN / name,
        shutil.which(name),
        Path("/usr/bin") / name,
        Path("/usr/sbin") / name,
    ):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise StackError(
        f"{name} not found: run `make install` (redis-server: apt-get install redis-server)"
    )
