"""Schemathesis against the live API's /openapi.json: no 5xx, and every response conforms to
the documented schema (status codes, content types, bodies). Runs last: it submits real jobs
as the "fuzz" user, cancelled afterwards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from devstack.stack import Stack
from shared.client import Client
from tests.integration.conftest import USERS

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,response_headers_conformance"
)


def test_schemathesis_finds_nothing(
    stack: Stack, as_user: dict[str, Client], tmp_path: Path
) -> None:
    report = tmp_path / "schemathesis.json"
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{stack.config.api_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {USERS['fuzz']}",
        "--checks",
        CHECKS,
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
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    finally:
        fuzz = as_user["fuzz"]
        for job in fuzz.iter_jobs():
            if not job.status.is_terminal():
                fuzz.cancel(job.id)
    (Path(__file__).parents[2] / "test-output").mkdir(exist_ok=True)
    (Path(__file__).parents[2] / "test-output" / "schemathesis.txt").write_text(result.stdout)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout or "passed" in result.stdout.lower()
