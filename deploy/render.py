"""Render a kustomization to multi-document YAML: `python deploy/render.py deploy/overlays/gpu`.

A small, pure-Python stand-in for `kustomize build` (no kustomize or kubectl binary is needed),
covering exactly the subset of the Kustomization format that deploy/ uses. For that subset
the output is the same objects, in the same order, as `kustomize build` (v5, default
`--reorder legacy`) and `kubectl apply -k`; only the YAML formatting may differ. Anything
outside the subset is refused with an error rather than rendered differently.

Supported (Kustomization apiVersion kustomize.config.k8s.io/v1beta1):

- `resources`: YAML files (one or more documents) and directories holding a
  kustomization.yaml, built recursively. Duplicate objects (same group, kind, namespace and
  name) are an error, as in kustomize.
- `patches`: entries with `path:` only, each a strategic-merge patch (one object) applied to the
  single resource with the patch's group, kind and name. Merge rules: mappings merge key by
  key, `null` deletes a key; lists of objects merge item by item on their Kubernetes patch
  merge key (`name` for containers, initContainers, env, volumes, imagePullSecrets;
  `mountPath` for volumeMounts); `tolerations`, `command` and `args` are replaced whole. Other
  lists are refused when both sides have one (their kustomize semantics are not implemented).
  `$patch` directives, `target:`, `options:` and inline `patch:` are refused.
- `namespace`: sets `metadata.namespace` on namespaced objects and renames `Namespace`
  objects to it, as kustomize does.
- `labels`: entries with `pairs` only (`includeSelectors`/`includeTemplates` false): added to
  every object's `metadata.labels`.
- `images`: `name` with `newName`, `newTag` and/or `digest`, applied to the `image` of every
  item of any `containers`/`initContainers` list in any object.

Transformers run in kustomize's order within each kustomization: patches, namespace, labels,
images. The root's output is sorted by kustomize's legacy order (kind priority, then
group/version/kind, then namespace and name).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}

# Strategic-merge patch keys of the Kubernetes types used here (see the API's patchMergeKey).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "volumeMounts": "mountPath",
}
REPLACED_LISTS = {"tolerations", "command", "args"}

# kustomize's legacy sort order (api/internal/builtins/SortOrderTransformer.go).
ORDER_FIRST = [
    "Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition", "ServiceAccount",
    "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding",
    "ConfigMap", "Secret", "Endpoints", "Service", "LimitRange", "PriorityClass",
    "PersistentVolume", "PersistentVolumeClaim", "Deployment", "StatefulSet", "CronJob",
    "PodDisruptionBudget",
]  # fmt: skip
ORDER_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]

# Kinds without a namespace (kustomize's resid.NotNamespaceableKinds).
CLUSTER_SCOPED = {
    "APIService", "CSIDriver", "CSINode", "CertificateSigningRequest", "Cluster", "ClusterRole",
    "ClusterRoleBinding", "ComponentStatus", "CustomResourceDefinition",
    "MutatingWebhookConfiguration", "Namespace", "Node", "PersistentVolume",
    "PodSecurityPolicy", "PriorityClass", "RuntimeClass", "SelfSubjectAccessReview",
    "SelfSubjectRulesReview", "StorageClass", "SubjectAccessReview", "TokenReview",
    "ValidatingWebhookConfiguration", "VolumeAttachment",
}  # fmt: skip


class RenderError(Exception):
    """The kustomization uses something outside the supported subset, or is invalid."""


def build(path: str | Path) -> list[Obj]:
    """The objects `kustomize build PATH` produces, in its output order."""
    return sorted(_build(Path(path)), key=_legacy_sort_key)


def render(path: str | Path) -> str:
    """`kustomize build PATH` as multi-document YAML."""
    return yaml.safe_dump_all(build(path), sort_keys=False, default_flow_style=False)


def _build(root: Path) -> list[Obj]:
    kust = _load_kustomization(root)
    objects: list[Obj] = []
    for entry in kust.get("resources") or []:
        target = root / entry
        loaded = _build(target) if target.is_dir() else _load_objects(_file_in(root, entry))
        for obj in loaded:
            if any(_ident(obj) == _ident(seen) for seen in objects):
                raise RenderError(f"{root}: {_describe(obj)} is defined twice")
            objects.append(obj)
    for patch in kust.get("patches") or []:
        _apply_patch(root, objects, patch)
    if namespace := kust.get("namespace"):
        for obj in objects:
            _set_namespace(obj, namespace)
    for label in kust.get("labels") or []:
        _add_labels(root, objects, label)
    for image in kust.get("images") or []:
        for obj in objects:
            _set_images(obj, image)
    return objects


def _load_kustomization(root: Path) -> Obj:
    for name in KUSTOMIZATION_FILES:
        if (root / name).is_file():
            kust = yaml.safe_load((root / name).read_text()) or {}
            break
    else:
        raise RenderError(f"{root}: no kustomization.yaml")
    if kust.get("kind", "Kustomization") != "Kustomization":
        raise RenderError(f"{root}: kind must be Kustomization")
    if unsupported := set(kust) - SUPPORTED_KEYS:
        raise RenderError(f"{root}: render.py does not support {sorted(unsupported)}")
    return kust


def _file_in(root: Path, relative: str) -> Path:
    """kustomize's default load restrictor: files must lie in or below the kustomization."""
    path = root / relative
    if not path.resolve().is_relative_to(root.resolve()):
        raise RenderError(f"{root}: {relative} is outside the kustomization's folder")
    return path


def _load_objects(path: Path) -> list[Obj]:
    if not path.is_file():
        raise RenderError(f"{path}: no such file or directory")
    objects = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for obj in objects:
        if not isinstance(obj, dict) or not {"apiVersion", "kind", "metadata"} <= obj.keys():
            raise RenderError(f"{path}: every document needs apiVersion, kind and metadata")
        if not obj["metadata"].get("name"):
            raise RenderError(f"{path}: {obj['kind']} without metadata.name")
    return objects


def _group(obj: Obj) -> str:
    api_version: str = obj["apiVersion"]
    return api_version.split("/")[0] if "/" in api_version else ""


def _ident(obj: Obj) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return (_group(obj), obj["kind"], meta.get("namespace") or "", meta["name"])


def _describe(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _legacy_sort_key(obj: Obj) -> tuple[int, str, str, str]:
    kind = obj["kind"]
    if kind in ORDER_FIRST:
        rank = ORDER_FIRST.index(kind) - len(ORDER_FIRST)
    elif kind in ORDER_LAST:
        rank = 1 + ORDER_LAST.index(kind)
    else:
        rank = 0
    api_version: str = obj["apiVersion"]
    group, _, version = api_version.rpartition("/")
    gvk = "_".join([group or "~G", version or "~V", kind])
    meta = obj["metadata"]
    return (rank, gvk, meta.get("namespace") or "~X", meta["name"])


# --- patches ---------------------------------------------------------------------------------


def _apply_patch(root: Path, objects: list[Obj], entry: Obj) -> None:
    if set(entry) != {"path"}:
        raise RenderError(f"{root}: patches entries may only have `path:` (got {sorted(entry)})")
    path = _file_in(root, entry["path"])
    patches = _load_objects(path)
    if len(patches) != 1:
        raise RenderError(f"{path}: a patch file holds exactly one object")
    patch = patches[0]
    matches = [
        obj
        for obj in objects
        if (_group(obj), obj["kind"], obj["metadata"]["name"])
        == (_group(patch), patch["kind"], patch["metadata"]["name"])
    ]
    if len(matches) != 1:
        raise RenderError(f"{path}: {len(matches)} targets for {_describe(patch)}")
    _merge(matches[0], patch, f"{_describe(patch)}")


def _merge(target: Obj, patch: Obj, where: str) -> None:
    for key, value in patch.items():
        if isinstance(key, str) and key.startswith("$"):
            raise RenderError(f"{where}: `{key}` directives are not supported")
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value, f"{where}.{key}")
        elif isinstance(value, list) and target.get(key):
            target[key] = _merge_list(key, target[key], value, f"{where}.{key}")
        else:
            target[key] = copy.deepcopy(value)


def _merge_list(key: str, current: list[Any], patch: list[Any], where: str) -> list[Any]:
    if key in REPLACED_LISTS:
        return copy.deepcopy(patch)
    merge_key = MERGE_KEYS.get(key)
    if merge_key is None:
        raise RenderError(f"{where}: merging the list `{key}` is not supported")
    merged = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise RenderError(f"{where}: every item needs `{merge_key}`")
        found = [m for m in merged if m.get(merge_key) == item[merge_key]]
        if found:
            _merge(found[0], item, f"{where}[{item[merge_key]}]")
        else:
            merged.append(copy.deepcopy(item))
    return merged


# --- namespace, labels, images ------------------------------------------------------------


def _set_namespace(obj: Obj, namespace: str) -> None:
    if obj["kind"] == "Namespace":
        obj["metadata"]["name"] = namespace
    elif obj["kind"] not in CLUSTER_SCOPED:
        obj["metadata"]["namespace"] = namespace


def _add_labels(root: Path, objects: list[Obj], entry: Obj) -> None:
    extra = set(entry) - {"pairs", "includeSelectors", "includeTemplates"}
    if extra or entry.get("includeSelectors") or entry.get("includeTemplates"):
        raise RenderError(f"{root}: labels entries support only `pairs` (got {sorted(entry)})")
    for obj in objects:
        labels = obj["metadata"].get("labels") or {}
        labels.update({str(k): str(v) for k, v in entry["pairs"].items()})
        obj["metadata"]["labels"] = labels


def _split_image(image: str) -> tuple[str, str, str]:
    """(name, tag, digest) of an image reference; tag and digest may be empty."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :], digest
    return name, "", digest


def _set_images(obj: Obj, entry: Obj) -> None:
    if not set(entry) <= {"name", "newName", "newTag", "digest"} or "name" not in entry:
        raise RenderError(f"images entries take name, newName, newTag, digest (got {entry})")
    if obj["kind"] == "CustomResourceDefinition":
        return
    for container in _containers(obj):
        image = container.get("image")
        if not isinstance(image, str):
            continue
        name, tag, digest = _split_image(image)
        if name != entry["name"]:
            continue
        name = entry.get("newName") or name
        new_tag, new_digest = str(entry.get("newTag") or ""), entry.get("digest") or ""
        if new_tag or new_digest:
            tag, digest = new_tag, new_digest
        container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _containers(node: Any) -> Iterator[Obj]:
    """Every item of a `containers` or `initContainers` list anywhere under node."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (item for item in value if isinstance(item, dict))
            yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python deploy/render.py KUSTOMIZATION_DIR", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(render(argv[1]))
    except (RenderError, OSError, yaml.YAMLError) as exc:
        print(f"render.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
