"""The layering rules: only shared/state/ touches job data in Redis; the API stays torch-free;
the client side imports no server code (the import-linter contracts in pyproject.toml)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Modules that may run Redis commands themselves: the owner of job data, the connection
# factory, the broker's queues and the data set records.
REDIS_OWNERS = ("shared/state/", "shared/config.py", "shared/broker.py", "shared/catalog.py")
REDIS_CLIENTS = frozenset({"redis", "aredis", "_redis", "_aredis"})


def _sources() -> list[Path]:
    found = []
    for top in ("trainyard", "shared", "services", "workers"):
        found += sorted((ROOT / top).rglob("*.py"))
    return [p for p in found if not str(p.relative_to(ROOT)).startswith(REDIS_OWNERS)]


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else None


def redis_uses(source: str) -> list[str]:
    """`x.keys.job(...)`-style key building and `x.redis.hset(...)`-style commands in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        owner = _name(node.value)
        if owner == "keys" and isinstance(node.value, ast.Attribute):
            found.append(f"line {node.lineno}: builds a Redis key (.keys.{node.attr})")
        elif owner in REDIS_CLIENTS and node.attr not in ("close", "aclose"):
            found.append(f"line {node.lineno}: runs a Redis command ({owner}.{node.attr})")
    return found


def test_no_module_outside_shared_state_builds_keys_or_runs_redis_commands() -> None:
    offenders = {
        str(path.relative_to(ROOT)): uses
        for path in _sources()
        if (uses := redis_uses(path.read_text()))
    }
    assert offenders == {}


def test_the_scan_finds_what_the_old_routes_did() -> None:
    # What services/api/routes/jobs.py did before shared/state/ owned it (issue 16).
    old = (
        "async def f(registry, owner, key):\n"
        "    redis_key = registry.keys.idempotency(owner, key)\n"
        "    await registry.aredis.delete(redis_key)\n"
        "    return {k: v for k, v in {}.items()}.keys()\n"
    )
    assert redis_uses(old) == [
        "line 2: builds a Redis key (.keys.idempotency)",
        "line 3: runs a Redis command (aredis.delete)",
    ]


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
