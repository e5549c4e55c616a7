"""The CI-only compose override may swap images and host ports, nothing else: whatever else
the container test runs is the user-facing docker-compose.yml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.containers.helpers import CI_OVERRIDE, COMPOSE_FILE, OverrideValue, load_compose


def container_ports(ports: list[Any]) -> list[str]:
    """The container side of each published port (short syntax `[ip:][host:]container`)."""
    return [str(entry).rsplit(":", 1)[-1] for entry in ports]


def override_problems(base: dict[str, Any], override: dict[str, Any]) -> list[str]:
    """Why `override` is more than an image/port swap for `base` (empty when it is not)."""
    problems = [f"top-level key {key!r}" for key in override if key != "services"]
    services = base.get("services", {})
    for name, changes in (override.get("services") or {}).items():
        if name not in services:
            problems.append(f"new service {name!r}")
            continue
        for key, value in changes.items():
            plain = value.value if isinstance(value, OverrideValue) else value
            if key == "image":
                continue
            if key == "ports" and container_ports(plain) == container_ports(
                services[name].get("ports", [])
            ):
                continue
            problems.append(f"{name}.{key}")
    return problems


def test_the_ci_override_swaps_only_images_and_host_ports() -> None:
    base = load_compose(COMPOSE_FILE)
    override = load_compose(CI_OVERRIDE)
    assert override_problems(base, override) == []
    # It stands in for every image that comes from a registry, and only for those.
    pulled = {
        name
        for name, service in base["services"].items()
        if "build" not in service and not set(service.get("profiles", [])) & {"flower"}
    }
    assert {n for n, s in override["services"].items() if "image" in s} == pulled


@pytest.mark.parametrize(
    "extra",
    [
        "  api:\n    environment:\n      TRAINYARD_S3_ENDPOINT: 127.0.0.1:9000\n",
        "  minio:\n    ports: !override\n      - 127.0.0.1:9000:9100\n",
        "  worker-cpu:\n    cap_drop: []\n",
        "  sidecar:\n    image: x:1\n",
    ],
)
def test_the_check_catches_other_changes(tmp_path: Path, extra: str) -> None:
    bad = tmp_path / "compose.ci.yml"
    bad.write_text(CI_OVERRIDE.read_text() + extra)
    assert override_problems(load_compose(COMPOSE_FILE), load_compose(bad))
