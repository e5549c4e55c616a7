"""The client (SDK and CLI) stands alone: it imports none of the servers' dependencies and
finds the API in TRAINYARD_API_URL / TRAINYARD_API_TOKEN or .trainyard/stack.env only."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from trainyard.client import DEFAULT_API_URL, Client, api_defaults

ROOT = Path(__file__).resolve().parents[2]
# Import names of what only the servers install (the `api` and `worker` extras).
SERVER_MODULES = (
    "pydantic_settings",
    "redis",
    "minio",
    "celery",
    "numpy",
    "PIL",
    "tenacity",
    "pythonjsonlogger",
    "fastapi",
    "torch",
)


def test_the_client_imports_no_server_dependency() -> None:
    code = (
        "import sys, trainyard.client, trainyard.cli\n"
        f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({SERVER_MODULES!r}))\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _requirement_names(requirements: list[str]) -> list[str]:
    return [re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0] for r in requirements]


def test_the_package_needs_only_the_client_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(_requirement_names(project["dependencies"])) == [
        "httpx",
        "httpx-sse",
        "pydantic",
        "rich",
    ]
    # Each server extra carries the server core in full, the same pins in both.
    api, worker = (set(project["optional-dependencies"][x]) for x in ("api", "worker"))
    core = {
        *("pydantic-settings", "redis", "minio", "celery"),
        *("numpy", "tenacity", "pillow", "python-json-logger"),
    }
    shared_pins = {r for r in api & worker if _requirement_names([r])[0] in core}
    assert sorted(_requirement_names(sorted(shared_pins))) == sorted(core)


@pytest.fixture
def no_api_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A cwd without .trainyard/ and an environment without the client's variables."""
    monkeypatch.delenv("TRAINYARD_API_URL", raising=False)
    monkeypatch.delenv("TRAINYARD_API_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write_stack_env(folder: Path, text: str) -> None:
    (folder / ".trainyard").mkdir()
    (folder / ".trainyard" / "stack.env").write_text(text)


def test_defaults_without_environment_or_stack_env(no_api_env: Path) -> None:
    assert api_defaults() == (DEFAULT_API_URL, None)
    with Client() as client:
        assert client.url == DEFAULT_API_URL
        assert "authorization" not in client.http.headers


def test_stack_env_supplies_url_and_token(no_api_env: Path) -> None:
    _write_stack_env(
        no_api_env,
        "TRAINYARD_REDIS_URL=redis://:p%40ss@127.0.0.1:6390/0\n"
        "\n# a comment\n"
        "TRAINYARD_API_URL=http://127.0.0.1:8123/\n"
        "export TRAINYARD_API_TOKEN='ty_abc=def'\n",
    )
    assert api_defaults() == ("http://127.0.0.1:8123/", "ty_abc=def")
    with Client() as client:
        assert client.url == "http://127.0.0.1:8123"
        assert client.http.headers["authorization"] == "Bearer ty_abc=def"


def test_environment_overrides_stack_env_and_arguments_override_both(
    no_api_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_stack_env(
        no_api_env, "TRAINYARD_API_URL=http://127.0.0.1:8123\nTRAINYARD_API_TOKEN=from-file\n"
    )
    monkeypatch.setenv("TRAINYARD_API_TOKEN", "from-env")
    assert api_defaults() == ("http://127.0.0.1:8123", "from-env")
    with Client("http://api.example:80", "given") as client:
        assert client.url == "http://api.example:80"
        assert client.http.headers["authorization"] == "Bearer given"


def test_server_settings_do_not_affect_the_client(
    no_api_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings() refuses production without an S3 secret; the client never reads them."""
    monkeypatch.setenv("TRAINYARD_ENVIRONMENT", "production")
    monkeypatch.setenv("TRAINYARD_API_TOKEN", "t")
    with Client() as client:
        assert client.url == DEFAULT_API_URL
        assert client.http.headers["authorization"] == "Bearer t"
