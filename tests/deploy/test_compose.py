"""docker-compose.yml: one GPU box (or a CPU one), scalable workers, no secrets in the file."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest

from shared.broker import inference_queue
from tests.deploy.helpers import (
    COMPOSE_WORKERS,
    REDIS_FLAGS,
    compose_env,
    duration_s,
    image_is_pinned,
    interpolate,
)

Compose = dict[str, Any]


@pytest.fixture(scope="module")
def services(compose_raw: Compose, env_example: dict[str, str]) -> dict[str, Any]:
    """The services as `docker compose config` would see them after `cp .env.example .env`."""
    resolved: dict[str, Any] = interpolate(compose_raw, env_example)["services"]
    return resolved


def test_every_required_variable_is_in_env_example(
    compose_raw: Compose, env_example: dict[str, str]
) -> None:
    text = str(compose_raw)
    required = set(re.findall(r"\$\{([A-Z0-9_]+):?\?", text))
    assert required >= {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "REDIS_PASSWORD"}
    assert required <= set(env_example)
    with pytest.raises(KeyError, match="is required"):
        interpolate(compose_raw, {})


def test_secrets_come_from_env_only(compose_raw: Compose, env_example: dict[str, str]) -> None:
    required = r"\$\{%s:\?[^}]+\}"
    for name, service in compose_raw["services"].items():
        env = compose_env(service)
        for key in ("TRAINYARD_S3_SECRET_KEY", "MINIO_ROOT_PASSWORD"):
            if key in env:
                assert re.fullmatch(required % "MINIO_ROOT_PASSWORD", env[key]), (name, key)
        for key in ("REDIS_PASSWORD", "REDISCLI_AUTH"):
            if key in env:
                assert re.fullmatch(required % "REDIS_PASSWORD", env[key]), (name, key)
        # Every Redis URL logs in with the password from .env.
        for key in ("TRAINYARD_REDIS_URL", "CELERY_BROKER_URL"):
            if key in env:
                pattern = rf"redis://:{required % 'REDIS_PASSWORD'}@redis:6379/0"
                assert re.fullmatch(pattern, env[key]), (name, key)
    for key in ("MINIO_ROOT_PASSWORD", "REDIS_PASSWORD"):
        assert "change-me" in env_example[key], "ship a placeholder, not a secret"


def test_images_pinned_and_no_fixed_names(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert image_is_pinned(service["image"]), name
        assert "container_name" not in service, f"{name}: breaks --scale"
    assert services["flower"]["image"] == "mher/flower:2.0.1"


def test_redis_durability(services: dict[str, Any]) -> None:
    command = services["redis"]["command"]
    for flag, value in REDIS_FLAGS:
        assert command[command.index(flag) + 1] == value
    assert "--maxmemory" in command, "noeviction only bites with a memory cap"
    assert services["redis"]["volumes"] == ["redis-data:/data"]
    assert "ports" not in services["redis"]


def test_waits_on_health_not_sleeps(services: dict[str, Any]) -> None:
    for name in ("redis", "minio", "api", "planner", "inference", *COMPOSE_WORKERS):
        assert services[name]["healthcheck"]["test"], name
    assert services["minio-init"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    for name in ("api", "planner", "inference", *COMPOSE_WORKERS):
        assert services[name]["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "minio-init": {"condition": "service_completed_successfully"},
        }, name
    for name, service in services.items():
        assert not re.search(r"\bsleep\b", str(service.get("command", ""))), name


def test_profiles(services: dict[str, Any]) -> None:
    assert services["worker"]["profiles"] == ["gpu"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    assert services["flower"]["profiles"] == ["flower"]
    for name in ("redis", "minio", "minio-init", "api"):
        assert "profiles" not in services[name], name
    (device,) = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "deploy" not in services["worker-cpu"]


def test_the_gpu_worker_is_the_tested_cpu_worker_plus_a_gpu(services: dict[str, Any]) -> None:
    """The container test runs `worker-cpu` (no GPU on CI), so the GPU `worker` may differ
    from it only in its profile and GPU reservation: a wrong S3 address or command given to
    the GPU worker alone would pass every other test."""
    gpu, cpu = (dict(services[n]) for n in ("worker", "worker-cpu"))
    for service in (gpu, cpu):
        service.pop("profiles")
        service.pop("deploy", None)
    assert gpu == cpu


@pytest.mark.parametrize("name", COMPOSE_WORKERS)
def test_worker_scales_and_shuts_down_gracefully(services: dict[str, Any], name: str) -> None:
    worker = services[name]
    assert "ports" not in worker, "fixed host ports break --scale"
    env = compose_env(worker)
    grace = float(env["TRAINYARD_SHUTDOWN_GRACE_S"])
    assert duration_s(worker["stop_grace_period"]) > grace
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    command = worker["command"]
    assert command[command.index("--concurrency") + 1] == "1"
    assert command[command.index("-Q") + 1] == env["TRAINYARD_QUEUE"]
    # No fixed `-n`: each replica derives its own unique Celery name at start-up.
    assert "-n" not in command
    health = " ".join(worker["healthcheck"]["test"])
    assert "TRAINYARD_WORKER_HEARTBEAT_FILE" in health and "inspect" not in health
    assert env["TRAINYARD_WORKER_HEARTBEAT_FILE"].startswith("/tmp/")
    assert "/tmp" in worker["tmpfs"]
    assert worker["volumes"] == [env["TRAINYARD_DATA_DIR"]]  # anonymous: one per replica


def test_one_inference_worker_on_its_own_queue(services: dict[str, Any]) -> None:
    """The inference worker (role `inference`) consumes only the inference queue, which no
    trainer or planner consumes: a prediction never waits behind a training job. It is the
    workers' image and hardening, always on (no profile), CPU only."""
    inference = services["inference"]
    env = compose_env(inference)
    assert env["TRAINYARD_WORKER_ROLE"] == "inference"
    queue = inference_queue(env["TRAINYARD_QUEUE"])
    command = inference["command"]
    assert command[:4] == ["celery", "-A", "workers.trainer.celery_app", "worker"]
    assert command[command.index("-Q") + 1] == queue
    assert command[command.index("--concurrency") + 1] == "1"
    assert "profiles" not in inference and "deploy" not in inference
    assert inference["image"] == services["worker-cpu"]["image"]
    health = " ".join(inference["healthcheck"]["test"])
    assert "TRAINYARD_WORKER_HEARTBEAT_FILE" in health
    consumers = [
        name
        for name, service in services.items()
        if "-Q" in (argv := service.get("command") or [])
        and queue in argv[argv.index("-Q") + 1].split(",")
    ]
    assert consumers == ["inference"]
    for key in ("tmpfs", "read_only", "cap_drop", "security_opt", "stop_grace_period"):
        assert inference[key] == services["planner"][key], key


# Every service's hardening: which user it runs as, and why.
NON_ROOT_USER = {"redis": "999:1000", "minio-init": "1000:1000", "flower": "1000:1000"}
# The image creates /data root-owned, so a new named volume is writable by root only: MinIO
# runs as the container's root, without any capability (docker-compose.yml says so).
ROOT_WITHOUT_CAPABILITIES = {"minio"}


def test_every_service_is_locked_down(services: dict[str, Any]) -> None:
    built = {name for name, service in services.items() if "build" in service}
    assert built == {"api", "planner", "inference", *COMPOSE_WORKERS}  # USER 10001 (Dockerfile)
    assert set(services) == built | set(NON_ROOT_USER) | ROOT_WITHOUT_CAPABILITIES
    for name, service in services.items():
        assert service["cap_drop"] == ["ALL"], name
        assert "cap_add" not in service and "privileged" not in service, name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["read_only"] is True, name
        assert service.get("user") == NON_ROOT_USER.get(name), name
    for name in ("minio", "minio-init", "flower"):
        assert "/tmp" in services[name]["tmpfs"], name
    # What MinIO and mc write outside /data goes to the tmpfs: HOME (mc's config), certs.
    assert compose_env(services["minio"])["HOME"] == "/tmp"
    assert compose_env(services["minio-init"])["HOME"] == "/tmp"
    command = services["minio"]["command"]
    assert command[command.index("--certs-dir") + 1].startswith("/tmp/")


def test_no_password_on_a_command_line(services: dict[str, Any]) -> None:
    """Passwords reach processes through the environment or stdin, never argv (`ps`)."""
    redis = services["redis"]
    argv = " ".join([*redis["command"], *redis["healthcheck"]["test"]])
    assert "--requirepass" not in argv and " -a " not in argv
    assert "REDIS_PASSWORD" in redis["command"][2], "requirepass comes in on stdin"
    for name, service in services.items():
        text = str(service.get("command", "")) + str(service.get("entrypoint", ""))
        assert "change-me" not in text and "--broker" not in text, name


def test_flower_never_runs_without_a_login(services: dict[str, Any]) -> None:
    """The flower service's own command, run with sh: it refuses to start without
    FLOWER_BASIC_AUTH=user:password, and only with one does it go on to start flower."""
    flower = services["flower"]
    assert compose_env(flower)["FLOWER_BASIC_AUTH"] == "", "unset in .env.example"
    assert "--basic-auth" not in str(flower["command"]), "read from the environment"
    script = flower["command"][flower["command"].index("-c") + 1]

    def start(auth: str | None) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/nonexistent"}  # `celery` cannot be found: the branch is visible
        if auth is not None:
            env["FLOWER_BASIC_AUTH"] = auth
        return subprocess.run(
            ["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=30
        )

    for auth in (None, "", "admin", "admin:", ":secret"):
        refused = start(auth)
        assert refused.returncode == 1, auth
        assert "FLOWER_BASIC_AUTH" in refused.stderr, auth
    started = start("admin:secret")
    assert started.returncode == 127 and "celery" in started.stderr  # exec celery flower
