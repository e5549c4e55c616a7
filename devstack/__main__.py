"""`python -m devstack up|down|status` — what `make up` / `make down` run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from devstack.stack import Stack, StackConfig, StackError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--root", type=Path, default=Path(".trainyard"))
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
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

    # up: reuse the running stack (and its ports and keys) when there is one.
    if config is None or not any(p.alive() for p in Stack(config).processes):
        config = StackConfig.fresh(root, workers=args.workers)
    stack = Stack(config)
    try:
        stack.up()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    env = stack.write_env()
    print(f"local stack up; settings in {env}:")
    print(env.read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
