"""A user's laptop: `pip install .` without extras in a fresh venv gives a working `trainyard`
CLI and SDK against the live API, with none of the servers' dependencies installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("torch", "celery", "redis", "minio", "pydantic_settings", "numpy")
# Run in the venv from a folder without the source tree, so `trainyard` is the installed one.
SDK_SCRIPT = """
import json, trainyard.client
from trainyard import Client
from shared.schemas import ClassifierSpec
with Client() as api:
    job = api.submit(ClassifierSpec(max_steps=5, name="light-client"))
    listed = [j.id for j in api.list_jobs(limit=50).data]
    cancelled = api.cancel(job.id)
print(json.dumps({"module": trainyard.client.__file__, "id": job.id, "listed": job.id in listed,
                  "owner": job.owner, "cancel": cancelled.status.value}))
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the project installed without extras (from a copy of the source, so
    pip's in-tree build leaves the checkout alone)."""
    tmp = tmp_path_factory.mktemp("light-client")
    source = tmp / "src"
    source.mkdir()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(ROOT / package, source / package, ignore=ignore)
    env = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=120)
    install = subprocess.run(
        [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr[-4000:]
    yield env


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without TRAINYARD_* (and no PYTHONPATH into the checkout)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_") and k != "PYTHONPATH"
    }
    return {**env, "COLUMNS": "200", **extra}


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, cwd=cwd, env=_clean_env(**env), timeout=120
    )


def test_the_cli_runs_without_server_dependencies(venv: Path, tmp_path: Path) -> None:
    shown = _run([str(venv / "bin" / "trainyard"), "--help"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "submit" in shown.stdout and "datasets" in shown.stdout
    for module in SERVER_ONLY:
        probe = _run([str(venv / "bin" / "python"), "-c", f"import {module}"], tmp_path)
        assert probe.returncode == 1 and "ModuleNotFoundError" in probe.stderr, module


def test_the_sdk_reaches_the_api_through_the_environment(
    venv: Path, stack: Stack, tmp_path: Path
) -> None:
    done = _run(
        [str(venv / "bin" / "python"), "-c", SDK_SCRIPT],
        tmp_path,
        TRAINYARD_API_URL=stack.config.api_url,
        TRAINYARD_API_TOKEN=stack.config.api_token,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert Path(result["module"]).is_relative_to(venv)  # the installed SDK, not the checkout
    assert result["listed"] and result["owner"] == "dev"
    assert result["cancel"] in ("cancelled", "running")  # a running job stops at its next step


def test_stack_env_in_the_cwd_finds_the_local_stack(
    venv: Path, stack: Stack, tmp_path: Path
) -> None:
    """What `make up` writes (.trainyard/stack.env) is all the CLI and SDK need."""
    (tmp_path / ".trainyard").mkdir()
    lines = "".join(f"{k}={v}\n" for k, v in stack.config.env().items())
    (tmp_path / ".trainyard" / "stack.env").write_text(lines)
    done = _run([str(venv / "bin" / "python"), "-c", SDK_SCRIPT], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = json.loads(done.stdout)["id"]
    listing = _run([str(venv / "bin" / "trainyard"), "jobs", "--limit", "50"], tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert job_id in listing.stdout
    # The environment wins over the file.
    refused = _run(
        [str(venv / "bin" / "trainyard"), "jobs"], tmp_path, TRAINYARD_API_TOKEN="ty_wrong"
    )
    assert refused.returncode == 1 and refused.stderr.startswith("error: HTTP 401")
