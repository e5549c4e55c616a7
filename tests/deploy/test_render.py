"""deploy/render.py implements its kustomize subset exactly, and refuses anything else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.render import RenderError, build
from tests.deploy.helpers import DEPLOY, OVERLAY_IDS, OVERLAYS, REPO


def write(folder: Path, name: str, *docs: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(yaml.safe_dump_all(docs, sort_keys=False))


def deployment(name: str, **spec: Any) -> dict[str, Any]:
    pod = {
        "containers": [
            {"name": "app", "image": "example/app:1", "env": [{"name": "A", "value": "1"}]},
            {"name": "side", "image": "registry.local:5000/side@sha256:" + "a" * 64},
        ],
        "initContainers": [{"name": "init", "image": "example/app"}],
        **spec,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod},
        },
    }


@pytest.fixture
def base(tmp_path: Path) -> Path:
    root = tmp_path / "base"
    write(root, "ns.yaml", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
    write(
        root,
        "objects.yaml",
        deployment("web", tolerations=[{"key": "a", "operator": "Exists"}]),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "reader"},
            "rules": [],
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
        },
    )
    write(root, "kustomization.yaml", {"resources": ["ns.yaml", "objects.yaml"]})
    return root


def overlay(tmp_path: Path, **kustomization: Any) -> Path:
    root = tmp_path / "overlay"
    kustomization.setdefault("resources", ["../base"])
    write(root, "kustomization.yaml", kustomization)
    return root


def test_namespace_labels_and_legacy_order(tmp_path: Path, base: Path) -> None:
    objects = build(overlay(tmp_path, namespace="prod", labels=[{"pairs": {"team": "ml"}}]))
    assert [o["kind"] for o in objects] == [
        "Namespace",
        "ClusterRole",
        "ConfigMap",
        "Service",
        "Deployment",
    ]
    by_kind = {o["kind"]: o for o in objects}
    assert by_kind["Namespace"]["metadata"] == {"name": "prod", "labels": {"team": "ml"}}
    assert "namespace" not in by_kind["ClusterRole"]["metadata"]
    web = by_kind["Deployment"]
    assert web["metadata"]["namespace"] == "prod"
    assert web["metadata"]["labels"] == {"app": "web", "team": "ml"}
    # `labels` without includeSelectors/includeTemplates leaves selectors and pods alone.
    assert web["spec"]["selector"]["matchLabels"] == {"app": "web"}
    assert web["spec"]["template"]["metadata"]["labels"] == {"app": "web"}
    assert by_kind["Service"]["spec"]["selector"] == {"app": "web"}


def test_images(tmp_path: Path, base: Path) -> None:
    images = [
        {"name": "example/app", "newName": "reg.io/app", "newTag": "2"},
        {"name": "registry.local:5000/side", "digest": "sha256:" + "b" * 64},
    ]
    web = build(overlay(tmp_path, images=images))[-1]
    pod = web["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "reg.io/app:2"
    assert pod["initContainers"][0]["image"] == "reg.io/app:2"
    assert pod["containers"][1]["image"] == "registry.local:5000/side@sha256:" + "b" * 64


def test_strategic_merge_patch(tmp_path: Path, base: Path) -> None:
    root = overlay(tmp_path, patches=[{"path": "patch.yaml"}])
    patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "template": {
                "spec": {
                    "nodeSelector": {"gpu": "yes"},
                    "tolerations": [{"key": "b", "operator": "Exists"}],
                    "containers": [
                        {
                            "name": "app",
                            "env": [{"name": "A", "value": "2"}, {"name": "B"}],
                            "resources": {"limits": {"nvidia.com/gpu": 1}},
                        },
                        {"name": "new", "image": "example/new:1"},
                    ],
                    "initContainers": None,
                }
            }
        },
    }
    write(root, "patch.yaml", patch)
    pod = build(root)[-1]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "yes"}
    assert pod["tolerations"] == [{"key": "b", "operator": "Exists"}]  # replaced, not merged
    assert [c["name"] for c in pod["containers"]] == ["app", "side", "new"]
    app = pod["containers"][0]
    assert app["image"] == "example/app:1"
    assert app["env"] == [{"name": "A", "value": "2"}, {"name": "B"}]
    assert app["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    assert "initContainers" not in pod  # null deletes


@pytest.mark.parametrize(
    ("kustomization", "patch", "message"),
    [
        ({"commonLabels": {"a": "b"}}, None, "does not support"),
        ({"patches": [{"path": "p.yaml", "target": {"kind": "Deployment"}}]}, None, "path"),
        ({"labels": [{"pairs": {"a": "b"}, "includeSelectors": True}]}, None, "pairs"),
        ({"resources": ["../base", "../base/objects.yaml"]}, None, "outside"),
        ({"resources": ["../base", "../base"]}, None, "twice"),
        ({}, {"spec": {"template": {"spec": {"$patch": "replace"}}}}, "directives"),
        ({}, {"spec": {"template": {"spec": {"containers": [{"image": "x:1"}]}}}}, "needs `name`"),
        ({}, {"metadata": {"name": "nope"}}, "0 targets"),
    ],
)
def test_unsupported_input_is_refused(
    tmp_path: Path,
    base: Path,
    kustomization: dict[str, Any],
    patch: dict[str, Any] | None,
    message: str,
) -> None:
    if patch is not None:
        kustomization["patches"] = [{"path": "p.yaml"}]
    root = overlay(tmp_path, **kustomization)
    doc: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
    }
    for key, value in (patch or {}).items():
        doc[key] = {**doc.get(key, {}), **value}
    write(root, "p.yaml", doc)
    with pytest.raises(RenderError, match=message):
        build(root)


def test_merging_an_unknown_list_is_refused(tmp_path: Path, base: Path) -> None:
    root = overlay(tmp_path, patches=[{"path": "p.yaml"}])
    write(
        root,
        "p.yaml",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"ports": [{"port": 81}]},
        },
    )
    with pytest.raises(RenderError, match="ports"):
        build(root)


@pytest.mark.parametrize("name", OVERLAYS, ids=OVERLAY_IDS)
def test_cli_prints_the_rendered_overlay(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "deploy/render.py", f"deploy/overlays/{name}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert list(yaml.safe_load_all(result.stdout)) == build(DEPLOY / "overlays" / name)


def test_cli_reports_errors(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "deploy/render.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "no kustomization.yaml" in result.stderr
