"""Schemathesis against the live API's /openapi.json with every check (`--checks all`): no 5xx;
every response conforms to the document (status codes, content types, bodies, headers);
requests valid by the document are accepted and invalid ones refused; undeclared methods get a
405 with `Allow`. The few rules the document cannot express are allowed, per operation, in
schemathesis.toml beside this file. Bounded: at most 25 examples per operation and phase, and
a time limit. On a stack of its own, configured like the session's: the jobs, data sets and
rate-limit spend of its "fuzz" user touch no other test, whatever the order."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.stack import Stack
from tests.integration.conftest import USERS, session_config
from tests.stack_plugin import running_stack

CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(session_config(Path(tmp_path_factory.mktemp("fuzzed")))) as stack:
        yield stack


def test_schemathesis_finds_nothing(fuzzed: Stack, tmp_path: Path) -> None:
    report = tmp_path / "schemathesis.json"
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(CONFIG),
        "run",
        f"{fuzzed.config.api_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {USERS['fuzz']}",
        "--checks",
        "all",
        "--max-examples",
        "25",
        "--seed",
        "7",
        "--phases",
        "examples,coverage,fuzzing",
        "--request-timeout",
        "30",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--no-color",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    (Path(__file__).parents[2] / "test-output").mkdir(exist_ok=True)
    (Path(__file__).parents[2] / "test-output" / "schemathesis.txt").write_text(result.stdout)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout or "passed" in result.stdout.lower()
