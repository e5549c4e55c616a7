"""A unique name per worker replica, for its Celery node name and its trainyard keys
(heartbeat, busy, draining, control).

`worker@%h` is not unique when replicas share a hostname: with host networking every
container has the host's, and so do several workers started on one machine. A worker started
without `-n` is named `<role>@<hostname>-<id>`, where <id> is the first 12 hex digits of its
container's id (stable across restarts of that container) or, outside a container, random
hex chosen at start-up. `-n NAME` still sets a fixed name."""

from __future__ import annotations

import re
import secrets
import socket
from pathlib import Path

_ID = re.compile(r"(?<![0-9a-f])([0-9a-f]{64})(?![0-9a-f])")


def container_id(root: Path = Path("/")) -> str | None:
    """This process's container id (64 hex digits) or None outside a container. Docker and
    podman bind-mount the container's own /etc/hostname from a folder named after its id
    (/proc/self/mountinfo); cgroup v1 paths (docker, libpod, cri-containerd) name it too."""
    try:
        for line in (root / "proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            if len(fields) > 4 and fields[4] == "/etc/hostname":
                found = _ID.search(fields[3])
                if found:
                    return found.group(1)
    except OSError:
        pass
    try:
        found = _ID.search((root / "proc/self/cgroup").read_text())
    except OSError:
        return None
    return found.group(1) if found else None


def node_name(role: str, hostname: str | None = None, root: Path = Path("/")) -> str:
    """`role@host-<container id[:12] or random 8 hex>`: unique per replica. A container whose
    hostname is already its id (Docker's and podman's default) is `role@<id[:12]>`."""
    host = hostname or socket.gethostname()
    suffix = (container_id(root) or "")[:12] or secrets.token_hex(4)
    if host == suffix:
        return f"{role}@{host}"
    return f"{role}@{host}-{suffix}"
