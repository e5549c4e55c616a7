"""`python -m devstack up|down|status` — what `make up` / `make down` run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from devstack.security import private_dir
from devstack.stack import Stack, StackConfig, StackError

# stack.env entries `make up` shows masked: they are in the file (0600) for clients to read.
SECRET_SETTINGS = ("TRAINYARD_S3_SECRET_KEY", "TRAINYARD_API_TOKEN", "TRAINYARD_API_TOKENS")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--root", type=Path, default=Path(".trainyard"))
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    root: Path = private_dir(args.root.resolve())
    config = StackConfig.load(root)

    if args.command == "down":
        if config is None:
            print("no local stack here")
            return 0
        Stack(config).down()
        print("local stack stopped")
        return 0

    if args.command == "status":
        if config is None:
            print("no local stack here")
            return 1
        stack = Stack(config)
        for proc in stack.processes:
            state = "up" if proc.alive() else "down"
            print(f"{proc.name:10} {state:5} pid={proc.pid()} log={proc.log_file}")
        return 0 if stack.running() else 1

    # up: reuse the running stack (and its ports and keys) when there is one, unless it was
    # started before the stack had passwords (its Redis and storage are open): restart that one.
    if config is not None and _without_passwords(root):
        Stack(config).down()
        config = None
    if config is None or not any(p.alive() for p in Stack(config).processes):
        config = StackConfig.fresh(root, workers=args.workers)
    stack = Stack(config)
    try:
        stack.up()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    env = stack.write_env()
    print(f"local stack up; settings in {env} (secrets shown as ***, readable by you only):")
    for name, value in config.env().items():
        if name in SECRET_SETTINGS:
            value = "***"
        print(f"{name}={value.replace(config.redis_password, '***')}")
    return 0


def _without_passwords(root: Path) -> bool:
    """Whether root/stack.json was written before the stack had a Redis password."""
    try:
        return "redis_password" not in json.loads((root / "stack.json").read_text())
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(main())
