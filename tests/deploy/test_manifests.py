"""The rendered Kubernetes objects: schema-valid, consistent, and what operations need."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes_validate import utils as kv

from deploy.render import build
from services.api.main import app
from tests.deploy.helpers import (
    DEPLOY,
    OVERLAY_IDS,
    OVERLAYS,
    REDIS_FLAGS,
    config_value,
    container,
    containers,
    find,
    image_is_pinned,
    labels_match,
    pod_spec,
)

Objects = list[dict[str, Any]]
KEDA = "keda.sh/v1alpha1"
K8S_VERSION = kv.latest_version()


def schema_errors(objects: Objects) -> list[str]:
    errors = []
    for obj in objects:
        if obj["apiVersion"] == KEDA:
            continue  # no schema bundled: test_scaled_object checks it
        try:
            kv.validate(obj, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
    return errors


def test_schemas_are_recent() -> None:
    major, minor = (int(p) for p in K8S_VERSION.split(".")[:2])
    assert (major, minor) >= (1, 30)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_objects_match_the_kubernetes_schemas(rendered: dict[str, Objects], overlay: str) -> None:
    assert schema_errors(rendered[overlay]) == []


def test_optional_ingress_matches_the_schemas(rendered: dict[str, Objects]) -> None:
    objects = build(DEPLOY / "extras" / "ingress")
    assert {o["kind"] for o in objects} == {"Ingress", "NetworkPolicy"}
    assert schema_errors(objects) == []
    services = {o["metadata"]["name"]: o for o in rendered["gpu"] if o["kind"] == "Service"}
    for ingress in (o for o in objects if o["kind"] == "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                ports = [p["name"] for p in services[backend["name"]]["spec"]["ports"]]
                assert backend["port"]["name"] in ports


def test_strict_validation_catches_mistakes(rendered: dict[str, Objects]) -> None:
    worker = json.loads(json.dumps(find(rendered["gpu"], "Deployment", "worker")))
    worker["spec"]["template"]["spec"]["terminationGracePeriod"] = 180
    assert schema_errors([worker])


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_namespace_and_names(rendered: dict[str, Objects], overlay: str) -> None:
    objects = rendered[overlay]
    assert [o["kind"] for o in objects].count("Namespace") == 1
    assert objects[0]["kind"] == "Namespace"
    namespace = objects[0]["metadata"]["name"]
    for obj in objects[1:]:
        assert obj["metadata"]["namespace"] == namespace, obj["metadata"]["name"]
    assert not [o for o in objects if o["kind"] == "Secret"], "Secrets are created by users"


def test_gpu_only_in_the_gpu_overlay(rendered: dict[str, Objects]) -> None:
    gpu = find(rendered["gpu"], "Deployment", "worker")
    pod = pod_spec(gpu)
    assert pod is not None
    assert container(gpu, "worker")["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    cpu = find(rendered["cpu"], "Deployment", "worker")
    assert "nvidia" not in json.dumps(cpu)
    assert "nodeSelector" not in cpu["spec"]["template"]["spec"]
    assert "tolerations" not in cpu["spec"]["template"]["spec"]


def test_api_probes_exist_in_the_app(rendered: dict[str, Objects]) -> None:
    paths = set(app.openapi()["paths"])
    for overlay in OVERLAYS:
        api = find(rendered[overlay], "Deployment", "api")
        ctr = container(api, "api")
        assert ctr["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert ctr["livenessProbe"]["httpGet"]["path"] == "/healthz"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in ctr:
                assert ctr[probe]["httpGet"]["path"] in paths, probe
                assert ctr[probe]["httpGet"]["port"] == "http"
        assert ctr["ports"] == [{"name": "http", "containerPort": 8000}]
        assert ctr["command"][-4:] == ["--host", "0.0.0.0", "--port", "8000"]
        # h11 caps a request head at 16 KiB; httptools, uvicorn's default, buffers any size
        assert ctr["command"][ctr["command"].index("--http") + 1] == "h11"
        assert ctr["resources"]["requests"] and ctr["resources"]["limits"]
        service = find(rendered[overlay], "Service", "api")
        assert service["spec"]["ports"][0]["port"] == 8000


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_worker_shutdown_and_liveness(rendered: dict[str, Objects], overlay: str) -> None:
    objects = rendered[overlay]
    worker = find(objects, "Deployment", "worker")
    pod = pod_spec(worker)
    assert pod is not None
    grace = int(config_value(objects, "TRAINYARD_SHUTDOWN_GRACE_S"))
    assert pod["terminationGracePeriodSeconds"] > grace
    ctr = container(worker, "worker")
    command = ctr["command"]
    assert command[:4] == ["celery", "-A", "workers.trainer.celery_app", "worker"]
    assert command[command.index("--concurrency") + 1] == "1"
    assert command[command.index("-Q") + 1] == config_value(objects, "TRAINYARD_QUEUE")
    assert command[command.index("-n") + 1] == "worker@%h"
    # Liveness: the heartbeat file's age, on a writable mount.
    heartbeat = config_value(objects, "TRAINYARD_WORKER_HEARTBEAT_FILE")
    mounts = {m["mountPath"] for m in ctr["volumeMounts"]}
    assert any(heartbeat.startswith(m.rstrip("/") + "/") for m in mounts)
    assert config_value(objects, "TRAINYARD_DATA_DIR") in mounts
    for probe in ("startupProbe", "livenessProbe"):
        text = " ".join(ctr[probe]["exec"]["command"])
        assert "TRAINYARD_WORKER_HEARTBEAT_FILE" in text and "getmtime" in text
        assert "inspect" not in text
    assert "readinessProbe" not in ctr  # nothing routes traffic to a worker


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_scaled_object(rendered: dict[str, Objects], overlay: str) -> None:
    objects = rendered[overlay]
    scaled = [o for o in objects if o["kind"] == "ScaledObject"]
    assert len(scaled) == 1
    so = scaled[0]
    assert so["apiVersion"] == KEDA
    spec = so["spec"]
    assert set(spec) <= {
        "scaleTargetRef",
        "pollingInterval",
        "cooldownPeriod",
        "initialCooldownPeriod",
        "idleReplicaCount",
        "minReplicaCount",
        "maxReplicaCount",
        "fallback",
        "advanced",
        "triggers",
    }
    target = spec["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"}
    worker = find(objects, "Deployment", "worker")
    assert "replicas" not in worker["spec"], "the ScaledObject owns the replica count"
    assert 0 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    assert spec["cooldownPeriod"] > 0 and spec["pollingInterval"] > 0
    queue = config_value(objects, "TRAINYARD_QUEUE")
    namespace = so["metadata"]["namespace"]
    redis = find(objects, "Service", "redis")
    port = redis["spec"]["ports"][0]["port"]
    lists = []
    for trigger in spec["triggers"]:
        assert trigger["type"] == "redis"
        meta = trigger["metadata"]
        assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata values are strings"
        assert set(meta) <= {
            "address",
            "host",
            "port",
            "listName",
            "listLength",
            "activationListLength",
            "databaseIndex",
            "enableTLS",
            "unsafeSsl",
            "usernameFromEnv",
            "passwordFromEnv",
        }
        assert int(meta["listLength"]) >= 1
        # The address is the in-cluster Redis Service, fully qualified (KEDA runs elsewhere).
        assert meta["address"] == f"redis.{namespace}.svc.cluster.local:{port}"
        lists.append(meta["listName"])
    # The default queue, and class queues named TRAINYARD_QUEUE.<class>.
    assert lists[0] == queue == "trainyard"
    assert all(name.startswith(f"{queue}.") for name in lists[1:])
    redis_url = config_value(objects, "TRAINYARD_REDIS_URL")
    assert redis_url == f"redis://redis:{port}/{spec['triggers'][0]['metadata']['databaseIndex']}"
    # KEDA builds an autoscaling/v2 HPA from `advanced`: validate that part against it.
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-hpa-worker"},
        "spec": {
            "scaleTargetRef": target,
            "minReplicas": max(1, spec["minReplicaCount"]),
            "maxReplicas": spec["maxReplicaCount"],
            "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
        },
    }
    advanced = {"horizontalPodAutoscalerConfig", "restoreToOriginalReplicaCount"}
    assert set(spec["advanced"]) <= advanced
    assert schema_errors([hpa]) == []


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_images_are_pinned(rendered: dict[str, Objects], overlay: str) -> None:
    images = [c["image"] for o in rendered[overlay] for c in containers(o)]
    assert images
    assert [i for i in images if not image_is_pinned(i)] == []
    assert {"trainyard/api:0.1.0", "trainyard/worker:0.1.0"} <= set(images)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_no_plaintext_secrets(rendered: dict[str, Objects], overlay: str) -> None:
    sensitive = ("SECRET", "PASSWORD", "ACCESS_KEY", "TOKEN")
    for obj in rendered[overlay]:
        if obj["kind"] == "ConfigMap":
            # A file *path* is not a secret: the tokens file itself comes from a Secret.
            assert not [
                k
                for k in obj["data"]
                if any(s in k.upper() for s in sensitive) and not k.endswith("_FILE")
            ]
        for ctr in containers(obj):
            for env in ctr.get("env", []):
                if any(s in env["name"].upper() for s in sensitive):
                    assert "value" not in env, f"{env['name']} given as a literal"
                    assert env["valueFrom"]["secretKeyRef"]["name"] == "trainyard-s3"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_pod_security(rendered: dict[str, Objects], overlay: str) -> None:
    objects = rendered[overlay]
    accounts = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceAccount"}
    assert accounts and all(a["automountServiceAccountToken"] is False for a in accounts.values())
    workloads = [o for o in objects if pod_spec(o) is not None]
    assert len(workloads) == 6  # api, worker, planner, redis, minio, minio-init
    for obj in workloads:
        pod = pod_spec(obj)
        assert pod is not None
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        assert pod["serviceAccountName"] in accounts, name
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        for ctr in containers(obj):
            ctx = ctr["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["readOnlyRootFilesystem"] is True, name
            assert ctx["capabilities"]["drop"] == ["ALL"], name
            assert ctr["resources"]["requests"] and ctr["resources"]["limits"]["memory"], name


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_references_resolve(rendered: dict[str, Objects], overlay: str) -> None:
    """Selectors select their pods; ConfigMap references exist; Secrets are trainyard-s3."""
    objects = rendered[overlay]
    pods = {
        f"{o['kind']}/{o['metadata']['name']}": o["spec"]["template"]["metadata"]["labels"]
        for o in objects
        if pod_spec(o) is not None
    }
    for obj in objects:
        spec = obj.get("spec", {})
        if obj["kind"] in ("Deployment", "StatefulSet"):
            assert labels_match(spec["selector"], pods[f"{obj['kind']}/{obj['metadata']['name']}"])
        if obj["kind"] == "StatefulSet":
            assert find(objects, "Service", spec["serviceName"])
        if obj["kind"] == "Service":
            selector = {"matchLabels": spec["selector"]}
            assert [n for n, labels in pods.items() if labels_match(selector, labels)]
        if obj["kind"] in ("PodDisruptionBudget", "NetworkPolicy"):
            selector = spec.get("selector") or spec.get("podSelector")
            assert [n for n, labels in pods.items() if labels_match(selector, labels)] or (
                selector == {}
            ), obj["metadata"]["name"]
        for ctr in containers(obj):
            for source in ctr.get("envFrom", []):
                find(objects, "ConfigMap", source["configMapRef"]["name"])
            for env in ctr.get("env", []):
                ref = env.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    cm = find(objects, "ConfigMap", ref["configMapKeyRef"]["name"])
                    assert ref["configMapKeyRef"]["key"] in cm["data"]
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] == "trainyard-s3"
                    assert ref["secretKeyRef"]["key"] in ("access-key", "secret-key")


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_redis_and_minio(rendered: dict[str, Objects], overlay: str) -> None:
    objects = rendered[overlay]
    redis = find(objects, "StatefulSet", "redis")
    args = container(redis, "redis")["args"]
    for flag, value in REDIS_FLAGS:
        assert args[args.index(flag) + 1] == value
    assert "--maxmemory" in args, "noeviction only bites with a memory cap"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert find(objects, "Service", "redis")["spec"]["clusterIP"] == "None"
    minio = find(objects, "StatefulSet", "minio")
    assert minio["spec"]["volumeClaimTemplates"]
    env = {e["name"]: e for e in container(minio, "minio")["env"]}
    for name in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "trainyard-s3"
    init = find(objects, "Job", "minio-init")
    script = " ".join(container(init, "mc")["args"])
    assert "mc mb --ignore-existing" in script


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_network_policies(rendered: dict[str, Objects], overlay: str) -> None:
    objects = rendered[overlay]
    policies = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    pods = {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for o in objects
        if pod_spec(o) is not None
    }

    def allowed_pods(policy: dict[str, Any]) -> set[str]:
        names = set()
        for rule in policy["ingress"]:
            for peer in rule["from"]:
                if "namespaceSelector" in peer:
                    continue  # another namespace (KEDA), checked below
                selector = peer["podSelector"]
                names |= {n for n, labels in pods.items() if labels_match(selector, labels)}
        return names

    assert allowed_pods(policies["redis-ingress"]) == {"api", "worker", "planner"}
    assert allowed_pods(policies["minio-ingress"]) == {"api", "worker", "minio-init"}
    redis_peers = [p for rule in policies["redis-ingress"]["ingress"] for p in rule["from"]]
    keda = [p for p in redis_peers if "namespaceSelector" in p]
    assert len(keda) == 1
    assert keda[0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "keda"}
    assert keda[0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "keda-operator"}
    assert policies["redis-ingress"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 6379}]
    assert policies["minio-ingress"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 9000}]
    assert policies["api-ingress"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8000}]}]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_disruption_budgets(rendered: dict[str, Objects], overlay: str) -> None:
    objects = rendered[overlay]
    api = find(objects, "PodDisruptionBudget", "api")["spec"]
    assert 1 <= api["minAvailable"] < find(objects, "Deployment", "api")["spec"]["replicas"]
    assert find(objects, "PodDisruptionBudget", "worker")["spec"] == {
        "maxUnavailable": 1,
        "selector": find(objects, "Deployment", "worker")["spec"]["selector"],
    }
