"""The layering rules: only shared/state/ touches job data in Redis; the API stays torch-free;
the client side imports no server code (the import-linter contracts in pyproject.toml)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The owners of what is in Redis: job data (shared/state/), the connection factory, the
# broker's queues and the data set records. Nothing else holds a Redis client or key names.
REDIS_OWNERS = ("shared/state/", "shared/config.py", "shared/broker.py", "shared/catalog.py")
REACHING_IN = frozenset({"redis", "aredis", "_redis", "_aredis", "keys"})


def _sources() -> list[Path]:
    found = []
    for top in ("trainyard", "shared", "services", "workers"):
        found += sorted((ROOT / top).rglob("*.py"))
    return [p for p in found if not str(p.relative_to(ROOT)).startswith(REDIS_OWNERS)]


def _job_key(value: object) -> bool:
    """A string that spells out a job key ("...:job:..."; prose, with spaces, does not)."""
    return isinstance(value, str) and ":job:" in value and " " not in value


def redis_uses(source: str) -> list[str]:
    """What in `source` reaches into Redis: a client or key names taken from an owner
    (`x.redis`, `x.aredis`, `x.keys`, in any expression: `r = registry.redis; r.hset(...)` is
    caught at its first line), a client used by name (`redis.hset`), or a job key spelled out
    (a string with ":job:"). `d.keys()` (a dict's) and closing a client are fine."""
    tree = ast.parse(source)
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if node.attr in REACHING_IN and not (node.attr == "keys" and id(node) in called):
                found.append((node.lineno, f"reaches into Redis (.{node.attr})"))
            elif (
                isinstance(node.value, ast.Name)
                and node.value.id in REACHING_IN - {"keys"}
                and node.attr not in ("close", "aclose")
            ):
                found.append((node.lineno, f"runs a Redis command ({node.value.id}.{node.attr})"))
        elif isinstance(node, ast.Constant) and _job_key(node.value):
            found.append((node.lineno, f"spells out a job key ({node.value!r})"))
    return [f"line {line}: {what}" for line, what in sorted(found)]


def test_no_module_outside_the_owners_reaches_into_redis() -> None:
    offenders = {
        str(path.relative_to(ROOT)): uses
        for path in _sources()
        if (uses := redis_uses(path.read_text()))
    }
    assert offenders == {}


def test_the_scan_finds_what_the_old_code_did_and_ways_around_it() -> None:
    # What services/api/routes/jobs.py and services/api/metrics.py did before shared/state/
    # owned job data (issue 16), and the detours a scan of call chains alone would miss.
    old = (
        "async def f(registry, owner, key, job_id):\n"
        "    redis_key = registry.keys.idempotency(owner, key)\n"
        "    await registry.aredis.delete(redis_key)\n"
        "    r = registry.redis\n"
        "    r.hset(f'trainyard:job:{job_id}', 'status', 'queued')\n"
        "    return {k: v for k, v in {}.items()}.keys()\n"
    )
    assert redis_uses(old) == [
        "line 2: reaches into Redis (.keys)",
        "line 3: reaches into Redis (.aredis)",
        "line 4: reaches into Redis (.redis)",
        "line 5: spells out a job key ('trainyard:job:')",
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
