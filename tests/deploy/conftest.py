"""Fixtures for the static deployment checks (no Docker, no cluster, no network)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy.helpers import (
    COMPOSE_FILE,
    DEPLOY,
    ENV_EXAMPLE,
    OVERLAYS,
    kustomize,
    read_env_file,
)


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Each overlay rendered by the real kustomize (`kubectl kustomize`)."""
    return {name: kustomize(DEPLOY / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="session")
def compose_raw() -> dict[str, Any]:
    """docker-compose.yml as written (anchors and merge keys resolved, no interpolation)."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


@pytest.fixture(scope="session")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)
