"""Schemathesis against the live API's /openapi.json with every check (`--checks all`): no 5xx;
every response conforms to the document (status codes, content types, bodies, headers);
requests valid by the document are accepted and invalid ones refused; undeclared methods get a
405 with `Allow`. The few rules the document cannot express are allowed, per operation, in
schemathesis.toml beside this file. Bounded: at most 25 examples per operation and phase, and
a time limit. Runs last: it submits real jobs as the "fuzz" user, cancelled afterwards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from devstack.stack import Stack
from shared.client import Client
from tests.integration.conftest import USERS

CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_nothing(
    stack: Stack, as_user: dict[str, Client], tmp_path: Path
) -> None:
    report = tmp_path / "schemathesis.json"
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(CONFIG),
        "run",
        f"{stack.config.api_url}/openapi.json",
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
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    finally:
        fuzz = as_user["fuzz"]
        for job in fuzz.iter_jobs():
            if not job.status.is_terminal():
                fuzz.cancel(job.id)
    (Path(__file__).parents[2] / "test-output").mkdir(exist_ok=True)
    (Path(__file__).parents[2] / "test-output" / "schemathesis.txt").write_text(result.stdout)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout or "passed" in result.stdout.lower()
