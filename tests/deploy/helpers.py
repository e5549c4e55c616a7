"""Helpers for the static deployment checks: paths, tools, rendered objects, compose values."""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ("cpu", "gpu")
# Not the bare overlay names: tests/conftest.py skips items with a `gpu` keyword without CUDA.
OVERLAY_IDS = [f"overlays/{name}" for name in OVERLAYS]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILES = {
    "api": REPO / "services/api/Dockerfile",
    "worker": REPO / "workers/trainer/Dockerfile",
}
# What the API and the worker need to reach Redis and S3 at all.
CONNECTION_SETTINGS = (
    "TRAINYARD_REDIS_URL",
    "TRAINYARD_S3_ENDPOINT",
    "TRAINYARD_S3_ACCESS_KEY",
    "TRAINYARD_S3_SECRET_KEY",
    "TRAINYARD_S3_BUCKET",
)
COMPOSE_WORKERS = ("worker", "worker-cpu")
REDIS_FLAGS = (
    ("--appendonly", "yes"),
    ("--appendfsync", "everysec"),
    ("--maxmemory-policy", "noeviction"),
)

Obj = dict[str, Any]


def tool(name: str) -> str | None:
    """A console script of the venv running the tests, else one on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return str(candidate)
    return shutil.which(name)


# --- Kubernetes objects -------------------------------------------------------------------


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_spec(obj: Obj) -> Obj | None:
    """The pod spec of a workload object, None for other kinds."""
    if obj["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"):
        spec: Obj = obj["spec"]["template"]["spec"]
        return spec
    if obj["kind"] == "CronJob":
        spec = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return spec
    return None


def containers(obj: Obj) -> Iterator[Obj]:
    spec = pod_spec(obj)
    if spec is not None:
        yield from spec.get("initContainers", [])
        yield from spec.get("containers", [])


def container(obj: Obj, name: str) -> Obj:
    found = [c for c in containers(obj) if c["name"] == name]
    assert len(found) == 1, f"{obj['kind']}/{obj['metadata']['name']} has no container {name}"
    return found[0]


def env_names(objects: list[Obj], ctr: Obj) -> set[str]:
    """Every variable a container gets: env entries plus the keys of envFrom ConfigMaps."""
    names = {e["name"] for e in ctr.get("env", [])}
    for source in ctr.get("envFrom", []):
        ref = source.get("configMapRef")
        assert ref is not None, f"envFrom other than configMapRef in {ctr['name']}: {source}"
        names |= {
            source.get("prefix", "") + k for k in find(objects, "ConfigMap", ref["name"])["data"]
        }
    return names


def config_value(objects: list[Obj], key: str) -> str:
    values = [
        o["data"][key] for o in objects if o["kind"] == "ConfigMap" and key in o.get("data", {})
    ]
    assert len(values) == 1, f"{key} should be set in exactly one ConfigMap"
    return str(values[0])


def labels_match(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels + matchExpressions) selects these labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        present, value = expr["key"] in labels, labels.get(expr["key"])
        op = expr["operator"]
        if (
            (op == "In" and value not in expr["values"])
            or (op == "NotIn" and value in expr["values"])
            or (op == "Exists" and not present)
            or (op == "DoesNotExist" and present)
        ):
            return False
    return True


def image_is_pinned(image: str) -> bool:
    """A tag other than `latest`, or a digest."""
    if "@sha256:" in image:
        return True
    name = image.rsplit("/", 1)[-1]
    return ":" in name and name.rsplit(":", 1)[1] not in ("", "latest")


# --- docker compose -----------------------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\{(?P<braced>[^}]+)\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")
_EXPR = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])(.*))?", re.DOTALL)


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation (${VAR}, ${VAR:-default}, ${VAR:?error}, $$)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        expr = match.group("braced") or match.group("bare")
        parsed = _EXPR.fullmatch(expr)
        assert parsed, f"unsupported interpolation ${{{expr}}}"
        name, op, arg = parsed.group(1), parsed.group(2) or "", parsed.group(3) or ""
        have = env.get(name)
        if op.startswith(":") and have == "":
            have = None
        if have is not None:
            return have
        if op.endswith("?"):
            raise KeyError(f"${{{name}}} is required: {arg}")
        return arg if op.endswith("-") else ""

    return _VAR.sub(substitute, value)


def compose_env(service: Obj) -> dict[str, str]:
    """A service's environment as a dict (compose allows a mapping or a KEY=VALUE list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def duration_s(value: str | int) -> float:
    """Compose durations: `3m`, `1m30s`, `180s`, `500ms`."""
    if isinstance(value, int):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)
