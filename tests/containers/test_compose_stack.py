"""The images and docker-compose.yml as users run them: build both images, start the stack with
podman-compose (stand-ins for the registry images through deploy/ci/compose.ci.yml), train
over REST, scale the CPU workers to 2, stop one replica mid-job, check the hardening, tear
everything down and remove the images.

Needs podman, runc, mmdebstrap and podman-compose (`make test` installs them). The worker
image is about 6.5 GB and takes minutes to build; CONTAINER_TEST_KEEP_IMAGES=1 keeps the
images (and wheelhouses) after the test and reuses them on the next run, for iterating
locally. Timings go to test-output/containers.json and the terminal (bench/RESULTS.md).
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devstack import containers as ct
from shared.schemas import JobPublic, JobStatus, WorkerPublic
from tests.containers.helpers import CI_OVERRIDE, COMPOSE_FILE, REPO, load_compose
from trainyard.client import Client

pytestmark = pytest.mark.containers

PROJECT = "trainyard-ci"
PROJECT_LABEL = f"io.podman.compose.project={PROJECT}"
KEEP = os.environ.get("CONTAINER_TEST_KEEP_IMAGES") == "1"
WORKER = "worker-cpu"
WORKER_CPUS = 1  # TRAINYARD_WORKER_CPUS: each replica's `cpus:` limit
SMALL: dict[str, Any] = {"task": "classifier", "max_steps": 30}
# Long enough to be stopped mid-run on one core; checkpoints are the worker's own on SIGTERM.
LONG: dict[str, Any] = {
    "task": "classifier",
    "batch_size": 1,
    "mode": "fast",
    "epochs": 2,
    "max_steps": 6000,
    "checkpoint_every": 500,
    "log_every": 25,
    "sample_every": 100_000,
}
TIMES: dict[str, float] = {}
SIZES: dict[str, float] = {}
SEEN: dict[str, Any] = {}  # what the scaled workers reported (GET /v1/workers), for the record


def host_port(service: str) -> int:
    """The host port compose.ci.yml publishes for `service`."""
    ports = load_compose(CI_OVERRIDE)["services"][service]["ports"]
    return int(str(ports.value[0]).split(":")[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # not yet
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} ({last})")


class Stack:
    """podman-compose on docker-compose.yml + the CI override, with a generated env file."""

    def __init__(self, env: dict[str, str], env_file: Path, token: str) -> None:
        self.env = env
        # podman-compose lets the process environment win over the env file: a variable the
        # caller happens to export (COMPOSE_PROFILES, TRAINYARD_API_TOKENS...) must not
        # change the stack under test.
        interpolated = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text()))
        self.compose_env = {
            k: v for k, v in env.items() if k not in interpolated and not k.startswith("COMPOSE_")
        }
        self.env_file = env_file
        self.token = token
        self.api_url = f"http://127.0.0.1:{host_port('api')}"

    def compose(self, *args: str, timeout: float = 600) -> str:
        compose = ct.podman_compose()
        assert compose
        files = ["-f", str(COMPOSE_FILE), "-f", str(CI_OVERRIDE)]
        argv = [compose, "-p", PROJECT, *files, "--env-file", str(self.env_file), *args]
        return ct.run(argv, env=self.compose_env, timeout=timeout).stdout

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return ct.run(["podman", *args], env=self.env, check=check, timeout=600)

    def containers(self, service: str | None = None, running: bool = True) -> list[str]:
        """Names of the project's containers (of `service`), running ones unless told."""
        args = ["ps", "--format", "{{.Names}}", "--filter", f"label={PROJECT_LABEL}"]
        if service:
            args += ["--filter", f"label=io.podman.compose.service={service}"]
        if not running:
            args.append("--all")
        return sorted(self.podman(*args).stdout.split())

    def inspect(self, name: str) -> dict[str, Any]:
        data = json.loads(self.podman("inspect", name).stdout)
        assert isinstance(data, list) and data
        return dict(data[0])

    def healthy(self, name: str) -> bool:
        """Run the container's HEALTHCHECK once (no systemd here runs it on a timer)."""
        return self.podman("healthcheck", "run", name, check=False).returncode == 0

    def wait_healthy(self, service: str, timeout: float) -> None:
        wait_for(
            lambda: (names := self.containers(service)) and all(map(self.healthy, names)),
            timeout,
            f"{service} to be healthy",
        )

    def logs(self) -> str:
        out = []
        for name in self.containers(running=False):
            tail = self.podman("logs", "--tail", "30", name, check=False)
            out.append(f"--- {name}\n{tail.stdout}{tail.stderr}")
        return "\n".join(out)

    def status_of(self, name: str) -> dict[str, str]:
        """Fields of /proc/1/status in a running container (what its main process really has)."""
        text = self.podman("exec", name, "cat", "/proc/1/status").stdout
        return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)

    def down(self) -> None:
        """Remove every container of the project (compose's down misses scaled replicas), its
        volumes, pod and network."""
        self.compose("down", "--volumes", "--timeout", "10", timeout=300)
        label = f"label={PROJECT_LABEL}"
        names = self.podman("ps", "-a", "-q", "--filter", label).stdout.split()
        if names:
            self.podman("rm", "--force", "--time", "5", *names, check=False)
        vols = self.podman("volume", "ls", "-q", "--filter", label).stdout.split()
        if vols:
            self.podman("volume", "rm", "--force", *vols, check=False)
        self.podman("pod", "rm", "--force", "--ignore", f"pod_{PROJECT}", check=False)
        self.podman("network", "rm", "--force", f"{PROJECT}_default", check=False)


def record() -> None:
    """Write the timings and sizes to test-output/containers.json (conftest prints them)."""
    out = REPO / "test-output"
    out.mkdir(exist_ok=True)
    (out / "containers.json").write_text(
        json.dumps({"seconds": TIMES, "mb": SIZES, **SEEN}, indent=1)
    )


@pytest.fixture(scope="module")
def engine() -> dict[str, str]:
    missing = ct.missing_tools()
    assert not missing, f"missing {missing}: `make container-deps` and `make install`"
    return ct.engine_env()


@pytest.fixture(scope="module")
def images(engine: dict[str, str]) -> Iterator[None]:
    """Base, stand-ins and both images, built from this checkout (reused only with KEEP)."""
    names = [ct.API_IMAGE, ct.WORKER_IMAGE, ct.STANDIN_IMAGE, ct.BASE_IMAGE]
    if not KEEP:
        ct.remove_images(engine, names)
    try:
        TIMES["build_base"] = ct.build_base(engine)
        TIMES["build_standins"] = ct.build_standins(engine)
        version = ct.base_python_version(engine)
        for name, dockerfile, tag in (
            ("api", "services/api/Dockerfile", ct.API_IMAGE),
            ("worker", "workers/trainer/Dockerfile", ct.WORKER_IMAGE),
        ):
            wheels, TIMES[f"wheelhouse_{name}"] = ct.build_wheelhouse(
                name, ct.requirements(name), version, engine
            )
            # Always built, KEEP or not: with KEEP the layer cache makes an unchanged tree cost
            # seconds, and a broken Dockerfile still fails (reusing the tag hid it).
            TIMES[f"build_{name}"] = ct.build_image(REPO / dockerfile, tag, engine, wheels)
            SIZES[name] = ct.image_size_mb(tag, engine)
        yield
    finally:
        if not KEEP:
            ct.remove_images(engine, names)
            for folder in ct.STATE.glob("wheelhouse-*"):
                ct.shutil.rmtree(folder, ignore_errors=True)
        record()


@pytest.fixture(scope="module")
def stack(
    engine: dict[str, str], images: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    token = secrets.token_urlsafe(24)
    env_file = tmp_path_factory.mktemp("compose") / "ci.env"
    # The values a user puts in .env (see .env.example), generated; CI-only ports are in
    # compose.ci.yml. TRAINYARD_VERSION=ci picks the images built above.
    env_file.write_text(
        "\n".join(
            [
                "COMPOSE_PROFILES=cpu",
                "TRAINYARD_VERSION=ci",
                "MINIO_ROOT_USER=trainyard",
                f"MINIO_ROOT_PASSWORD={secrets.token_urlsafe(24)}",
                f"REDIS_PASSWORD={secrets.token_hex(24)}",
                f"TRAINYARD_API_TOKENS=ci:{token}:admin",
                f"TRAINYARD_S3_PUBLIC_ENDPOINT=127.0.0.1:{host_port('minio')}",
                f"TRAINYARD_WORKER_CPUS={WORKER_CPUS}",
                "",
            ]
        )
    )
    env_file.chmod(0o600)
    s = Stack(engine, env_file, token)
    s.down()  # leftovers of an interrupted run
    try:
        start = time.monotonic()
        # In phases: podman-compose 1.6 ignores `condition: service_healthy` without systemd.
        s.compose("up", "-d", "--no-deps", "redis", "minio")
        s.wait_healthy("redis", 60)
        s.wait_healthy("minio", 60)
        s.compose("up", "-d", "--no-deps", "minio-init")
        wait_for(
            lambda: (
                s.inspect(s.containers("minio-init", running=False)[0])["State"]["Status"]
                == "exited"
            ),
            60,
            "minio-init",
        )
        init = s.inspect(s.containers("minio-init", running=False)[0])
        assert init["State"]["ExitCode"] == 0, s.logs()
        s.compose("up", "-d", "--no-deps", "api", "planner", "inference", WORKER)
        s.wait_healthy("api", 60)
        with Client(s.api_url, token) as client:
            wait_for(lambda: len(workers(client)) == 1, 120, "the worker's heartbeat")
        TIMES["up"] = time.monotonic() - start
        yield s
    except BaseException:
        print(s.logs())
        raise
    finally:
        start = time.monotonic()
        s.down()
        TIMES["down"] = time.monotonic() - start


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.api_url, stack.token) as c:
        yield c


def workers(client: Client) -> list[WorkerPublic]:
    """Training workers whose pool processes have reported their thread counts."""
    online = [WorkerPublic.model_validate(w) for w in client._call("GET", "/v1/workers")]
    return [w for w in online if w.torch_threads is not None]


def live_workers(stack: Stack, client: Client) -> list[WorkerPublic]:
    """workers() whose container runs (a stopped replica's record lingers a few seconds)."""
    ids = [stack.inspect(name)["Id"][:12] for name in stack.containers(WORKER)]
    return [w for w in workers(client) if any(i in w.name for i in ids)]


def scale_workers(stack: Stack, client: Client, n: int) -> list[WorkerPublic]:
    """At least `n` worker replicas running and reporting (a stopped one is started again),
    so each test sets up the workers it needs and the tests pass in any order."""
    stopped = set(stack.containers(WORKER, running=False)) - set(stack.containers(WORKER))
    for name in sorted(stopped):
        stack.podman("start", name)
    stack.compose("up", "-d", "--no-deps", "--scale", f"{WORKER}={n}", WORKER)
    found: list[WorkerPublic] = wait_for(
        lambda: len(w := live_workers(stack, client)) == n and w, 120, f"{n} workers"
    )
    return found


def container_of(stack: Stack, worker_name: str) -> str:
    """The worker container whose id the replica's name carries (`worker@host-<id[:12]>`)."""
    for name in stack.containers(WORKER):
        if stack.inspect(name)["Id"][:12] in worker_name:
            return name
    raise AssertionError(f"no {WORKER} container for {worker_name}")


def succeeded(client: Client, job_id: str, timeout: float) -> JobPublic:
    done = client.wait(job_id, timeout=timeout)
    assert done.status is JobStatus.SUCCEEDED, done.error
    return done


def test_a_job_trains_through_the_containers(stack: Stack, client: Client, tmp_path: Path) -> None:
    start = time.monotonic()
    job = client.submit(SMALL)
    done = succeeded(client, job.id, 300)
    TIMES["job"] = time.monotonic() - start
    assert done.worker in {w.name for w in live_workers(stack, client)}
    assert container_of(stack, done.worker)
    paths = {a.path for a in client.artifacts(job.id)}
    assert any(p.endswith("model.pt") for p in paths), paths
    # Presigned URLs point at TRAINYARD_S3_PUBLIC_ENDPOINT: the published S3 port.
    saved = client.download(job.id, tmp_path)
    assert saved and all(p.stat().st_size > 0 for p in saved)


def test_the_inference_worker_samples_and_predicts_through_the_containers(
    stack: Stack, client: Client
) -> None:
    """issue 18 in the images: compose's `inference` service answers samples of a
    (self-conditioned) conv_gan and predictions of a classifier, each a real job trained by
    the worker container; the objects land in the job's artifacts."""
    gan = client.submit({"task": "gan", "max_steps": 20, "sample_every": 20})
    classifier = client.submit({**SMALL, "seed": 7})
    succeeded(client, gan.id, 300)
    succeeded(client, classifier.id, 300)
    start = time.monotonic()
    drawn = client.sample(gan.id, n=8, seed=3)
    TIMES["first_sample"] = time.monotonic() - start
    again = client.sample(gan.id, n=8, seed=3)
    assert drawn.images.shape == (8, 1, 28, 28) and again.images.key == drawn.images.key
    paths = {a.path for a in client.artifacts(gan.id)}
    assert drawn.grid.path in paths and drawn.images.path in paths, paths
    digits = np.zeros((3, 1, 28, 28), dtype=np.uint8)
    digits[:, :, 6:22, 12:16] = 255  # three bars: a "1" of sorts, enough to get an answer
    buf = io.BytesIO()
    np.savez(buf, x=digits)
    answer = client.predict(classifier.id, buf.getvalue())
    assert len(answer.probabilities) == 3 and len(answer.classes) == 10
    assert all(abs(sum(row) - 1) < 1e-6 for row in answer.probabilities)


def test_scaled_replicas_size_threads_to_their_cpu_share_and_both_train(
    stack: Stack, client: Client
) -> None:
    start = time.monotonic()
    pair = scale_workers(stack, client, 2)
    TIMES["scale"] = time.monotonic() - start
    SEEN["workers"] = [w.model_dump() for w in pair]
    assert len(stack.containers(WORKER)) == 2
    assert len({w.name for w in pair}) == 2, "each replica needs its own identity"
    for worker in pair:
        assert container_of(stack, worker.name)
        assert worker.cpu_quota == pytest.approx(WORKER_CPUS)  # the `cpus:` limit it runs under
        assert worker.concurrency == 1
        share = max(1, int(WORKER_CPUS / worker.concurrency))
        assert worker.torch_threads == share and worker.loader_threads == share
        assert worker.interop_threads and worker.writer_threads
    start = time.monotonic()
    ids = [client.submit({**SMALL, "seed": i}).id for i in range(4)]
    done = [succeeded(client, i, 300) for i in ids]
    TIMES["four_jobs_two_workers"] = time.monotonic() - start
    assert {j.worker for j in done} == {w.name for w in pair}


def test_stopping_one_replica_hands_its_job_to_the_other(stack: Stack, client: Client) -> None:
    scale_workers(stack, client, 2)
    job = client.submit(LONG)
    running = wait_for(
        lambda: (j := client.get(job.id)).step >= 50 and j, 300, "the long job to be running"
    )
    victim = container_of(stack, running.worker or "")
    start = time.monotonic()
    # SIGTERM to that container only (compose's `stop SERVICE` would stop every replica).
    try:
        stack.podman("stop", "--time", "180", victim)
        SEEN["long_job_step_at_stop"] = running.step
        TIMES["drain"] = time.monotonic() - start
        state = stack.inspect(victim)["State"]
        done = succeeded(client, job.id, 600)
        TIMES["handover"] = time.monotonic() - start
    finally:
        stack.podman("start", victim)  # back for the tests that come after, in any order
    assert state["ExitCode"] == 0, state  # it shut down itself, not SIGKILL'd at the deadline
    assert done.requeues == 1 and done.attempts == 2
    assert done.worker and done.worker != running.worker
    assert container_of(stack, done.worker) != victim
    statuses = [e.info for e in client.metrics(job.id, kind="status")]
    assert any(s.get("reason") == "worker shutting down" for s in statuses), statuses
    logs = client.metrics(job.id, kind="log")
    stopped = next(e for e in logs if e.info.get("stopped"))
    assert stopped.info["stopped"] == "shutdown"
    resumed = [e.info["resumed_from"] for e in logs if "resumed_from" in e.info]
    assert resumed[-1] == stopped.step > 0  # checkpointed where it stopped, not from 0


def test_images_run_unprivileged_with_the_compose_hardening(stack: Stack) -> None:
    services = load_compose(COMPOSE_FILE)["services"]
    checked = 0
    for service in ("redis", "minio", "api", "planner", "inference", WORKER):
        spec = services[service]
        for name in stack.containers(service):
            info = stack.inspect(name)
            status = stack.status_of(name)
            if service in ("api", "planner", "inference", WORKER):
                # The image's own user: numeric, not root, and what PID 1 really runs as.
                assert info["Config"]["User"] == "10001:10001"
                assert status["Uid"].split()[0] == "10001"
            if spec.get("cap_drop") == ["ALL"]:
                assert int(status["CapEff"], 16) == 0, (name, status["CapEff"])
                assert int(status["CapBnd"], 16) == 0, (name, status["CapBnd"])
            if "no-new-privileges:true" in spec.get("security_opt", []):
                assert status["NoNewPrivs"] == "1", name
            if spec.get("read_only"):
                assert info["HostConfig"]["ReadonlyRootfs"] is True
                probe = stack.podman("exec", name, "touch", "/probe", check=False)
                assert probe.returncode != 0 and "Read-only" in probe.stderr, probe.stderr
            checked += 1
    assert checked >= 6


def test_the_opt_in_compile_flag_works_in_the_worker_image(stack: Stack) -> None:
    """`compile: true` runs torch.compile, which builds C++ kernels and loads them: the image
    needs a compiler, and its caches must be on a mount that allows exec (compose's tmpfs
    /tmp need not). Run in a worker replica, with compose's read-only root and mounts."""
    (name, *_) = stack.containers(WORKER)
    code = (
        "import torch; f = torch.compile(lambda x: (x.sin() + 1).relu() * 2); "
        "x = torch.randn(64); "
        "torch.testing.assert_close(f(x), (x.sin() + 1).relu() * 2, rtol=1e-4, atol=1e-5); "
        "print('ok')"
    )
    done = stack.podman("exec", name, "python", "-c", code, check=False)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
