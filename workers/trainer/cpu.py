"""How many threads a worker process may run: its CPU quota divided among its pool processes.

torch sizes its thread pools from the machine's cores, not from the CPU a container or pod is
given: in a pod limited to 2 cores on a 64-core node, or with several workers on one host,
every worker's torch starts a team of threads per core and they oversubscribe the CPU
(bench/RESULTS.md, "Scaling out": 2 workers ran 3 times slower than 1). Here the quota comes
from, in order:

1. TRAINYARD_WORKER_CPUS (cores, may be fractional), when set;
2. the cgroup CPU limit of this process (v2 `cpu.max`, v1 `cpu.cfs_quota_us` /
   `cpu.cfs_period_us`, the tightest of its cgroup and their parents), capped at
3. the CPUs this process may run on (`os.sched_getaffinity`), used alone when no limit is set.

Each of the Celery pool's `concurrency` processes gets max(1, floor(quota / concurrency))
intra-op and inter-op torch threads, and the OpenMP/MKL/BLAS and torch.compile environment
variables say the same to anything they start. The pure functions take a `root` folder so
tests can hand them cgroup files of their own."""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Environment variables that size thread pools of libraries and of processes we start.
THREAD_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TORCHINDUCTOR_COMPILE_THREADS",
)
# A checkpoint needs at most two writer threads: one serialises while the other uploads.
MAX_WRITER_THREADS = 2


@dataclass(frozen=True)
class ThreadPlan:
    """Thread counts of one pool process; what its heartbeat reports."""

    cpu_quota: float  # cores the whole worker may use
    concurrency: int  # Celery pool processes sharing them
    torch_threads: int  # torch.set_num_threads (intra-op pool)
    interop_threads: int  # torch.set_num_interop_threads
    loader_threads: int  # data loading: per-batch transforms run on the intra-op pool
    writer_threads: int  # checkpoint serialiser + artifact uploader (workers/trainer/run.py)

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def plan(cpu_quota: float, concurrency: int) -> ThreadPlan:
    """Threads per pool process: max(1, floor(cpu_quota / concurrency)) each; writers at most
    MAX_WRITER_THREADS. `cpu_quota` is in cores; `concurrency` below 1 counts as 1."""
    concurrency = max(1, concurrency)
    share = max(1, math.floor(cpu_quota / concurrency + 1e-9))
    return ThreadPlan(
        cpu_quota=round(cpu_quota, 3),
        concurrency=concurrency,
        torch_threads=share,
        interop_threads=share,
        loader_threads=share,
        writer_threads=min(share, MAX_WRITER_THREADS),
    )


def cpu_quota(setting: float | None = None, root: Path = Path("/")) -> float:
    """Cores this process may use: `setting` when given, else the cgroup limit capped at the
    affinity count, else the affinity count (see the module docstring)."""
    if setting is not None:
        return setting
    cpus = affinity_cpus()
    limit = cgroup_cpus(root)
    return min(limit, cpus) if limit is not None else float(cpus)


def affinity_cpus() -> int:
    """How many CPUs this process may be scheduled on (cpusets, taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def cgroup_cpus(root: Path = Path("/")) -> float | None:
    """The CPU limit of this process's cgroups in cores, the tightest found in v2 `cpu.max`
    or v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us` along its cgroup paths; None when there is
    no limit or no cgroup file can be read. Reads `root`/proc/self/{cgroup,mountinfo} and the
    cgroup files under the mount points found there (also relative to `root`)."""
    try:
        memberships = _memberships((root / "proc/self/cgroup").read_text())
    except OSError:
        return None
    limits: list[float] = []
    for fstype, mount_root, mount_point in _cgroup_mounts(root):
        path = memberships.get("" if fstype == "cgroup2" else "cpu")
        if path is None:
            continue
        # Inside a container the mount's root is the container's own cgroup, so the process's
        # path is relative to it (or the mount is that cgroup itself).
        rel = path[len(mount_root) :] if path.startswith(mount_root) else ""
        folder = root / mount_point.lstrip("/") / rel.strip("/")
        top = root / mount_point.lstrip("/")
        while True:
            found = _v2_limit(folder) if fstype == "cgroup2" else _v1_limit(folder)
            if found is not None:
                limits.append(found)
            if folder == top or top not in folder.parents:
                break
            folder = folder.parent
    return min(limits) if limits else None


def _memberships(text: str) -> dict[str, str]:
    """/proc/self/cgroup -> {controller: path}; "" is the v2 hierarchy."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            found[""] = path
        for name in controllers.split(","):
            found.setdefault(name, path)
    return found


def _cgroup_mounts(root: Path) -> list[tuple[str, str, str]]:
    """(fstype, root in the hierarchy, mount point) of the v2 mount and v1 `cpu` mounts."""
    try:
        text = (root / "proc/self/mountinfo").read_text()
    except OSError:  # no mountinfo: the usual places
        return [("cgroup2", "/", "/sys/fs/cgroup"), ("cgroup", "/", "/sys/fs/cgroup/cpu")]
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        fstype, options = tail[0], tail[2].split(",")
        if fstype == "cgroup2" or (fstype == "cgroup" and "cpu" in options):
            mounts.append((fstype, _unescape(fields[3]), _unescape(fields[4])))
    return mounts


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _v2_limit(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period) if int(period) > 0 else None


def _v1_limit(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


# --- this process


_applied: ThreadPlan | None = None


def export_env(threads: ThreadPlan) -> None:
    """Tell libraries loaded later and every process started from here (torch.compile's
    workers, OpenMP and BLAS in children) the same thread count."""
    for name in THREAD_ENV:
        os.environ[name] = str(threads.torch_threads)


def apply(threads: ThreadPlan) -> ThreadPlan:
    """Size this process's torch pools to `threads` before any torch work, and return what
    torch actually runs with. The inter-op count can be set once per process, before any
    inter-op work: a process that already did (a forked child whose parent set it) keeps it."""
    global _applied
    import torch

    export_env(threads)
    torch.set_num_threads(threads.torch_threads)
    try:
        torch.set_num_interop_threads(threads.interop_threads)
    except RuntimeError as exc:
        log.warning("inter-op threads stay at %d: %s", torch.get_num_interop_threads(), exc)
    actual = torch.get_num_threads()
    _applied = ThreadPlan(
        cpu_quota=threads.cpu_quota,
        concurrency=threads.concurrency,
        torch_threads=actual,
        interop_threads=torch.get_num_interop_threads(),
        loader_threads=actual,  # batches are prepared on the training thread's intra-op pool
        writer_threads=threads.writer_threads,
    )
    return _applied


def current() -> ThreadPlan:
    """The plan this process applied; outside a worker (notebooks, tests), one process with
    this machine's quota."""
    return _applied or plan(cpu_quota(), 1)
