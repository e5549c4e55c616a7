"""docker-compose.yml: one GPU box (or a CPU one), scalable workers, no secrets in the file."""

from __future__ import annotations

import re
from typing import Any

import pytest

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
    assert required >= {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}
    assert required <= set(env_example)
    with pytest.raises(KeyError, match="is required"):
        interpolate(compose_raw, {})


def test_secrets_come_from_env_only(compose_raw: Compose, env_example: dict[str, str]) -> None:
    for name, service in compose_raw["services"].items():
        env = compose_env(service)
        for key in ("TRAINYARD_S3_SECRET_KEY", "MINIO_ROOT_PASSWORD"):
            if key in env:
                assert re.fullmatch(r"\$\{MINIO_ROOT_PASSWORD:\?[^}]+\}", env[key]), (name, key)
    assert "change-me" in env_example["MINIO_ROOT_PASSWORD"], "ship a placeholder, not a secret"


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
    for name in ("redis", "minio", "api", *COMPOSE_WORKERS):
        assert services[name]["healthcheck"]["test"], name
    assert services["minio-init"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    for name in ("api", *COMPOSE_WORKERS):
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
    assert command[command.index("-n") + 1] == "worker@%h"
    health = " ".join(worker["healthcheck"]["test"])
    assert "TRAINYARD_WORKER_HEARTBEAT_FILE" in health and "inspect" not in health
    assert env["TRAINYARD_WORKER_HEARTBEAT_FILE"].startswith("/tmp/")
    assert "/tmp" in worker["tmpfs"]
    assert [v["target"] for v in worker["volumes"]] == [env["TRAINYARD_DATA_DIR"]]
