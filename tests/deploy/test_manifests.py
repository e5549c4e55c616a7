"""The rendered Kubernetes objects: schema-valid, consistent, and what operations need."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kv

from services.api.main import app
from shared.broker import inference_queue
from shared.config import Settings
from shared.planning import GIB, choose_class, parse_classes, queue_for
from tests.deploy.helpers import (
    DEPLOY,
    KEDA_CRDS,
    OVERLAY_IDS,
    OVERLAYS,
    REDIS_FLAGS,
    config_value,
    container,
    containers,
    egress,
    find,
    image_is_pinned,
    keda_schemas,
    kustomize,
    labels_match,
    overlay_with,
    pod_env,
    pod_spec,
    secret_examples,
    workloads,
)

Objects = list[dict[str, Any]]
KEDA = "keda.sh/v1alpha1"
K8S_VERSION = kv.latest_version()
# The KEDA release the manifests are written for; its CRDs are vendored in deploy/vendor/keda.
KEDA_RELEASE = "v2.20.2"
# The pods that talk to Redis, with the password from the Secret trainyard-redis.
REDIS_CLIENTS = ("api", "worker", "planner", "inference")


def schema_errors(objects: Objects) -> list[str]:
    """Kubernetes objects against the Kubernetes schemas, KEDA's against its CRDs (strict)."""
    errors = []
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"].startswith("keda.sh/"):
            schema = keda_schemas().get((obj["apiVersion"], obj["kind"]))
            if schema is None:
                errors.append(f"{where}: no vendored KEDA schema for {obj['apiVersion']}")
                continue
            validator = jsonschema.Draft7Validator(schema)
            for error in validator.iter_errors(obj):
                path = ".".join(str(p) for p in error.absolute_path)
                errors.append(f"{where}: {path}: {error.message}")
            continue
        try:
            kv.validate(obj, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{where}: {path}: {exc.message}")
    return errors


def test_schemas_are_recent() -> None:
    major, minor = (int(p) for p in K8S_VERSION.split(".")[:2])
    assert (major, minor) >= (1, 30)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_objects_match_the_kubernetes_schemas(rendered: dict[str, Objects], overlay: str) -> None:
    assert schema_errors(rendered[overlay]) == []


def test_keda_schemas_are_vendored_with_their_licence() -> None:
    assert set(keda_schemas()) == {(KEDA, "ScaledObject"), (KEDA, "TriggerAuthentication")}
    assert "Apache License" in (KEDA_CRDS / "LICENSE").read_text()
    assert KEDA_RELEASE in (KEDA_CRDS / "README.md").read_text()


def test_optional_ingress_matches_the_schemas(rendered: dict[str, Objects]) -> None:
    objects = kustomize(DEPLOY / "extras" / "ingress")
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
    def copy(kind: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(json.dumps(find(rendered["gpu"], kind, name)))
        return obj

    worker = copy("Deployment", "worker")
    worker["spec"]["template"]["spec"]["terminationGracePeriod"] = 180
    assert schema_errors([worker])
    # KEDA objects: a misspelt field, a number where KEDA wants a string, a missing key.
    typo = copy("ScaledObject", "worker")
    typo["spec"]["maxReplicas"] = 4
    number = copy("ScaledObject", "worker")
    number["spec"]["triggers"][0]["metadata"]["listLength"] = 1
    auth = copy("TriggerAuthentication", "trainyard-redis")
    del auth["spec"]["secretTargetRef"][0]["key"]
    for bad in (typo, number, auth):
        assert len(schema_errors([bad])) == 1, bad


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_namespace_and_names(rendered: dict[str, Objects], overlay: str) -> None:
    objects = rendered[overlay]
    assert [o["kind"] for o in objects].count("Namespace") == 1
    assert objects[0]["kind"] == "Namespace"
    namespace = objects[0]["metadata"]["name"]
    for obj in objects[1:]:
        assert obj["metadata"]["namespace"] == namespace, obj["metadata"]["name"]
    assert not [o for o in objects if o["kind"] == "Secret"], "Secrets are created by users"


def test_kustomize_renders_every_overlay() -> None:
    assert set(OVERLAYS) == {"cpu", "gpu"}
    assert not (DEPLOY / "render.py").exists(), "the real kustomize renders the overlays"


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
def test_one_inference_worker_on_its_own_queue(rendered: dict[str, Objects], overlay: str) -> None:
    """One inference replica (role `inference`) consumes the inference queue and nothing else;
    no trainer or planner consumes it, so a prediction never waits behind a training job."""
    objects = rendered[overlay]
    inference = find(objects, "Deployment", "inference")
    assert inference["spec"]["replicas"] == 1
    ctr = container(inference, "inference")
    env = pod_env(objects, ctr, secret_examples())
    assert env["TRAINYARD_WORKER_ROLE"] == "inference"
    command = ctr["command"]
    assert command[:4] == ["celery", "-A", "workers.trainer.celery_app", "worker"]
    queue = inference_queue(config_value(objects, "TRAINYARD_QUEUE"))
    assert command[command.index("-Q") + 1] == queue
    assert command[command.index("--concurrency") + 1] == "1"
    assert command[command.index("-n") + 1] == "inference@%h"
    assert "nvidia" not in json.dumps(inference), "CPU only"
    text = " ".join(ctr["livenessProbe"]["exec"]["command"])
    assert "TRAINYARD_WORKER_HEARTBEAT_FILE" in text and "getmtime" in text
    heartbeat = config_value(objects, "TRAINYARD_WORKER_HEARTBEAT_FILE")
    mounts = {m["mountPath"] for m in ctr["volumeMounts"]}
    assert any(heartbeat.startswith(m.rstrip("/") + "/") for m in mounts)
    consumers = []
    for obj in objects:
        for other in containers(obj):
            argv = other.get("command", [])
            if argv[:4] == command[:4] and queue in argv[argv.index("-Q") + 1].split(","):
                consumers.append(obj["metadata"]["name"])
    assert consumers == ["inference"]
    targets = [o["spec"]["scaleTargetRef"]["name"] for o in objects if o["kind"] == "ScaledObject"]
    assert "inference" not in targets, "one replica, not scaled by KEDA"
    # The model cache fits in the container with room for torch and a batch of 1,024 images.
    limit = ctr["resources"]["limits"]["memory"]
    assert limit.endswith("Gi")
    cache = int(config_value(objects, "TRAINYARD_INFERENCE_CACHE_BYTES"))
    assert cache + 2 * GIB <= int(limit.removesuffix("Gi")) * GIB


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
    # The workers' Redis is the one KEDA watches, with the password KEDA logs in with.
    env = pod_env(objects, container(worker, "worker"), secret_examples())
    url = urlsplit(env["TRAINYARD_REDIS_URL"])
    assert (url.hostname, url.port) == ("redis", port)
    assert url.path == f"/{spec['triggers'][0]['metadata']['databaseIndex']}"
    auth = find(objects, "TriggerAuthentication", "trainyard-redis")
    assert auth["spec"] == {
        "secretTargetRef": [{"parameter": "password", "name": "trainyard-redis", "key": "password"}]
    }
    assert url.password == secret_examples()["trainyard-redis"]["password"]
    for trigger in spec["triggers"]:
        assert trigger["authenticationRef"] == {"name": "trainyard-redis"}
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


def routable_queues(settings: Settings) -> set[str]:
    """Every queue the planner (shared.planning) can send a job to under `settings`: the
    default one of an unplanned job, and the class choose_class picks for each device at 0
    bytes and at each class's usable size, with no worker online and with each class online."""
    classes = parse_classes(settings.MEMORY_CLASSES)
    queues = {queue_for("cpu", settings.QUEUE)}  # no probe in time: Planner.route_with
    sizes = [0, *(int(c.bytes * settings.MEMORY_HEADROOM) for c in classes)]
    onlines: list[set[str]] = [set(), *({c.name} for c in classes)]
    for device in ("auto", "cpu", "cuda"):
        for size in sizes:
            for online in onlines:
                klass, _ = choose_class(
                    classes, online, device, size, size, settings.MEMORY_HEADROOM
                )
                if klass is not None:
                    queues.add(queue_for(klass.name, settings.QUEUE))
    return queues


def gpu_memory_floor(pod: dict[str, Any]) -> int:
    """The least GPU memory (bytes) a node must report for the pod's required node affinity
    (`nvidia.com/gpu.memory` Gt N, MiB; GPU feature discovery's label); 0 if unconstrained."""
    required = pod.get("affinity", {}).get("nodeAffinity", {})
    terms = required.get("requiredDuringSchedulingIgnoredDuringExecution", {})
    floors = []
    for term in terms.get("nodeSelectorTerms", []):  # terms are ORed: the weakest one counts
        mib = [
            int(e["values"][0]) + 1
            for e in term.get("matchExpressions", [])
            if e["key"] == "nvidia.com/gpu.memory" and e["operator"] == "Gt"
        ]
        floors.append(max(mib, default=0) * 2**20)
    return min(floors, default=0)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_every_routable_queue_has_a_worker_and_a_trigger(
    rendered: dict[str, Objects], overlay: str
) -> None:
    """With no worker online the planner still routes to the smallest class that fits; a
    queue nobody consumes, or no KEDA trigger watches, holds its jobs forever at zero."""
    objects = rendered[overlay]
    secrets = secret_examples()

    def settings(deployment: str) -> Settings:
        obj = find(objects, "Deployment", deployment)
        env = pod_env(objects, container(obj, deployment), secrets)
        # model_validate: these values only, nothing from this process's environment.
        prefixed = {k: v for k, v in env.items() if k.startswith("TRAINYARD_")}
        return Settings.model_validate(
            {k.removeprefix("TRAINYARD_"): v for k, v in prefixed.items()}
        )

    # The API routes at submit, the planner when a probe ends (Planner.settle).
    routable = routable_queues(settings("api")) | routable_queues(settings("planner"))
    # What each trainer Deployment consumes: its -Q list and its class's queue
    # (workers/trainer/celery_app.py: the pinned class, else detected: cpu without a GPU;
    # a GPU's class depends on the card, unknown here, so a GPU worker must pin it).
    problems = []
    consumed: dict[str, set[str]] = {}
    for obj in objects:
        pod = pod_spec(obj)
        for ctr in containers(obj):
            command = ctr.get("command", [])
            if command[:4] != ["celery", "-A", "workers.trainer.celery_app", "worker"]:
                continue
            where = f"Deployment/{obj['metadata']['name']}"
            env = pod_env(objects, ctr, secrets)
            queues = set(command[command.index("-Q") + 1].split(","))
            consumed[obj["metadata"]["name"]] = queues
            if env.get("TRAINYARD_WORKER_ROLE", "trainer") != "trainer":
                continue
            gpus = ctr.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
            klass = env.get("TRAINYARD_WORKER_MEMORY_CLASS") or (None if gpus else "cpu")
            classes = {c.name: c for c in parse_classes(env["TRAINYARD_MEMORY_CLASSES"])}
            if klass is None:
                problems.append(f"{where}: a GPU worker must pin TRAINYARD_WORKER_MEMORY_CLASS")
            elif klass not in classes:
                problems.append(f"{where}: class {klass} is not in TRAINYARD_MEMORY_CLASSES")
            else:
                floor = gpu_memory_floor(pod) if pod is not None else 0
                if classes[klass].gpu and floor < classes[klass].bytes:
                    problems.append(
                        f"{where}: class {klass} needs {classes[klass].gib:g} GiB GPUs, its "
                        f"node affinity allows {floor / GIB:g} GiB ones"
                    )
                queues.add(queue_for(klass, env["TRAINYARD_QUEUE"]))
    watched: dict[str, set[str]] = {}
    for so in (o for o in objects if o["kind"] == "ScaledObject"):
        lists = {t["metadata"]["listName"] for t in so["spec"]["triggers"]}
        watched[so["spec"]["scaleTargetRef"]["name"]] = lists
    for queue in sorted(routable):
        consumers = sorted(name for name, queues in consumed.items() if queue in queues)
        if not consumers:
            problems.append(f"{queue}: no worker Deployment consumes it")
        elif not any(queue in watched.get(name, set()) for name in consumers):
            problems.append(f"{queue}: no KEDA trigger of {consumers} watches it")
    assert not problems, f"{overlay}: jobs could wait forever:\n" + "\n".join(problems)
    assert len(routable) >= (2 if overlay == "gpu" else 1)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_images_are_pinned(rendered: dict[str, Objects], overlay: str) -> None:
    images = [c["image"] for o in rendered[overlay] for c in containers(o)]
    assert images
    assert [i for i in images if not image_is_pinned(i)] == []
    assert {"trainyard/api:0.1.0", "trainyard/worker:0.1.0"} <= set(images)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_no_plaintext_secrets(rendered: dict[str, Objects], overlay: str) -> None:
    sensitive = ("SECRET", "PASSWORD", "ACCESS_KEY", "TOKEN", "AUTH")
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
                    assert env["valueFrom"]["secretKeyRef"]["name"] in secret_examples()


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_pod_security(rendered: dict[str, Objects], overlay: str) -> None:
    objects = rendered[overlay]
    accounts = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceAccount"}
    assert accounts and all(a["automountServiceAccountToken"] is False for a in accounts.values())
    workloads = [o for o in objects if pod_spec(o) is not None]
    assert len(workloads) == 7  # api, worker, planner, inference, redis, minio, minio-init
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
    """Selectors select their pods; ConfigMap references exist; every Secret and key referenced
    (env, volumes, KEDA) is one that base/secret.example.yaml tells users to create."""
    objects = rendered[overlay]
    secrets = secret_examples()
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
                    name, key = ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]
                    assert key in secrets[name], (name, key)
        for volume in (pod_spec(obj) or {}).get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets
        if obj["kind"] == "TriggerAuthentication":
            for ref in spec["secretTargetRef"]:
                assert ref["key"] in secrets[ref["name"]], ref
        if obj["kind"] == "ScaledObject":
            for trigger in spec["triggers"]:
                find(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])


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

    assert allowed_pods(policies["redis-ingress"]) == {"api", "worker", "planner", "inference"}
    assert allowed_pods(policies["minio-ingress"]) == {"api", "worker", "inference", "minio-init"}
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


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_redis_requires_its_password(rendered: dict[str, Objects], overlay: str) -> None:
    """Redis starts with `requirepass` from the Secret (not in its arguments); every client
    pod builds TRAINYARD_REDIS_URL with that password. tests/deploy/test_redis_auth.py runs
    the same command against a real redis-server."""
    objects = rendered[overlay]
    secrets = secret_examples()
    password = secrets["trainyard-redis"]["password"]
    redis = container(find(objects, "StatefulSet", "redis"), "redis")
    env = pod_env(objects, redis, secrets)
    assert env["REDIS_PASSWORD"] == env["REDISCLI_AUTH"] == password
    argv = [*redis["command"], *redis["args"]]
    assert "requirepass" in argv[2] and "--requirepass" not in argv
    assert "-a" not in " ".join(redis["readinessProbe"]["exec"]["command"]).split()
    assert "TRAINYARD_REDIS_URL" not in find(objects, "ConfigMap", "trainyard-config")["data"]
    for name in REDIS_CLIENTS:
        ctr = container(find(objects, "Deployment", name), name)
        variables = pod_env(objects, ctr, secrets)
        url = variables["TRAINYARD_REDIS_URL"]
        assert urlsplit(url).password == password, name


# What each pod may connect to: (peer, protocol/port). Nothing else, and nothing at all for
# Redis and MinIO, which only answer.
DNS = {("ns:kube-system/k8s-app=kube-dns", "UDP/53"), ("ns:kube-system/k8s-app=kube-dns", "TCP/53")}
REDIS = ("pod:redis", "TCP/6379")
MINIO = ("pod:minio", "TCP/9000")
EGRESS = {
    "api": {*DNS, REDIS, MINIO},
    "worker": {*DNS, REDIS, MINIO},
    "planner": {*DNS, REDIS},
    "inference": {*DNS, REDIS, MINIO},  # reads models, stores the samples it draws
    "minio-init": {*DNS, MINIO},
    "redis": set(),
    "minio": set(),
}
INTERNET = {
    (
        "ip:0.0.0.0/0-10.0.0.0/8-172.16.0.0/12-192.168.0.0/16-100.64.0.0/10-169.254.0.0/16-127.0.0.0/8",
        port,
    )
    for port in ("TCP/443", "TCP/80")
} | {("ip:::/0-fc00::/7-fe80::/10-::1/128", port) for port in ("TCP/443", "TCP/80")}


def ingress_allows(objects: Objects, source: str, target: str, port: str) -> bool:
    """Whether the target's ingress policies let the source workload's pods in on port."""
    pods = workloads(objects)
    protocol, number = port.split("/")
    for obj in objects:
        spec = obj["spec"] if obj["kind"] == "NetworkPolicy" else None
        if spec is None or not labels_match(spec["podSelector"], pods[target]):
            continue
        for rule in spec.get("ingress", []):
            ports = {f"{p['protocol']}/{p['port']}" for p in rule.get("ports", [])}
            peers = rule.get("from") or [{}]
            if ports and f"{protocol}/{number}" not in ports:
                continue
            for peer in peers:
                if not peer or (
                    "namespaceSelector" not in peer
                    and labels_match(peer["podSelector"], pods[source])
                ):
                    return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_egress_is_only_what_each_pod_needs(rendered: dict[str, Objects], overlay: str) -> None:
    objects = rendered[overlay]
    policies = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}
    assert policies["default-deny-egress"] == {"podSelector": {}, "policyTypes": ["Egress"]}
    assert {name: egress(objects, name) for name in workloads(objects)} == EGRESS
    # Every connection allowed out is also let in at the other end, on a port it listens on.
    for source, allowed in EGRESS.items():
        for peer, port in allowed:
            if peer.startswith("pod:"):
                target = peer.removeprefix("pod:")
                assert ingress_allows(objects, source, target, port), (source, target, port)
                listening = {
                    f"{p.get('protocol', 'TCP')}/{p['containerPort']}"
                    for c in containers(find(objects, "StatefulSet", target))
                    for p in c.get("ports", [])
                }
                assert port in listening, (target, port)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_dataset_downloads_are_opt_in(
    rendered: dict[str, Objects], overlay: str, tmp_path: Path
) -> None:
    """deploy/components/dataset-downloads adds public HTTPS/HTTP for the workers, nothing
    else; without it (the overlays as shipped) no pod reaches the internet."""
    objects = overlay_with(tmp_path, overlay, "dataset-downloads")
    assert schema_errors(objects) == []
    assert len(objects) == len(rendered[overlay]) + 1
    policy = find(objects, "NetworkPolicy", "worker-dataset-downloads")
    assert policy["metadata"]["namespace"] == rendered[overlay][0]["metadata"]["name"]
    assert egress(objects, "worker") == EGRESS["worker"] | INTERNET
    for name in workloads(objects):
        if name != "worker":
            assert egress(objects, name) == EGRESS[name], name
    # The shipped overlays mention the component but leave it off.
    text = (DEPLOY / "overlays" / overlay / "kustomization.yaml").read_text()
    assert "#   - ../../components/dataset-downloads" in text
    assert "components" not in yaml.safe_load(text)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_workers_size_their_threads_to_their_cpu_limit(
    rendered: dict[str, Objects], overlay: str
) -> None:
    """Trainers, planners and the inference worker get TRAINYARD_WORKER_CPUS from their own
    container's CPU limit (workers/trainer/cpu.py divides it among the pool processes), and
    have such a limit."""
    for name in ("worker", "planner", "inference"):
        ctr = container(find(rendered[overlay], "Deployment", name), name)
        env = {e["name"]: e for e in ctr.get("env", [])}
        ref = env["TRAINYARD_WORKER_CPUS"]["valueFrom"]["resourceFieldRef"]
        assert ref == {"containerName": name, "resource": "limits.cpu", "divisor": "1"}
        assert "cpu" in ctr["resources"]["limits"], name
