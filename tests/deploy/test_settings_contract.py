"""Every TRAINYARD_* variable compose and Kubernetes set is a real setting, and parses."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

from shared.config import Settings
from tests.deploy.helpers import (
    COMPOSE_WORKERS,
    CONNECTION_SETTINGS,
    DOCKERFILES,
    OVERLAY_IDS,
    OVERLAYS,
    compose_env,
    container,
    containers,
    env_names,
    find,
    interpolate,
)

Objects = list[dict[str, Any]]
PREFIX = str(Settings.model_config.get("env_prefix", ""))
KNOWN = {PREFIX + name for name in Settings.model_fields}


def k8s_variables(objects: Objects) -> dict[str, str]:
    """Every TRAINYARD_* a pod can see, with its literal value (secrets: a placeholder; a
    container resource from the downward API: a number, as Kubernetes gives it)."""
    found: dict[str, str] = {}
    for obj in objects:
        if obj["kind"] == "ConfigMap":
            found |= {k: str(v) for k, v in obj["data"].items() if k.startswith(PREFIX)}
        for ctr in containers(obj):
            for env in ctr.get("env", []):
                if env["name"].startswith(PREFIX):
                    source = env.get("valueFrom", {})
                    fallback = "2" if "resourceFieldRef" in source else "from-a-secret-placeholder"
                    found[env["name"]] = str(env.get("value", fallback))
    return found


def compose_variables(compose: dict[str, Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    for service in compose["services"].values():
        found |= {k: v for k, v in compose_env(service).items() if k.startswith(PREFIX)}
    return found


def dockerfile_variables() -> set[str]:
    names = set()
    for path in DOCKERFILES.values():
        names |= set(re.findall(rf"\b({PREFIX}[A-Z0-9_]+)=", path.read_text()))
    return names


def parse(variables: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.upper().startswith(PREFIX):
            monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def test_prefix() -> None:
    assert PREFIX == "TRAINYARD_"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_kubernetes_sets_only_real_settings(
    rendered: dict[str, Objects], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    variables = k8s_variables(rendered[overlay])
    assert sorted(set(variables) - KNOWN) == []
    settings = parse(variables, monkeypatch)
    assert settings.ENVIRONMENT == "production"
    assert settings.QUEUE == "trainyard"


def test_compose_sets_only_real_settings(
    compose_raw: dict[str, Any], env_example: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    variables = compose_variables(interpolate(compose_raw, env_example))
    assert sorted(set(variables) - KNOWN) == []
    settings = parse(variables, monkeypatch)
    assert settings.ENVIRONMENT == "production"
    assert settings.S3_SECRET_KEY.startswith("change-me")


def test_dockerfiles_set_only_real_settings() -> None:
    assert sorted(dockerfile_variables() - KNOWN) == []


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_kubernetes_connection_settings(rendered: dict[str, Objects], overlay: str) -> None:
    objects = rendered[overlay]
    for name in ("api", "worker"):
        names = env_names(objects, container(find(objects, "Deployment", name), name))
        assert set(CONNECTION_SETTINGS) <= names, name


def test_compose_connection_settings(compose_raw: dict[str, Any]) -> None:
    for name in ("api", *COMPOSE_WORKERS):
        assert set(CONNECTION_SETTINGS) <= set(compose_env(compose_raw["services"][name])), name
