"""A worker's CPU quota and thread counts (workers/trainer/cpu.py) and its replica identity
(workers/trainer/identity.py), from cgroup and mount files written under a temporary root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workers.trainer import cpu
from workers.trainer.identity import container_id, node_name

CID = "3f1c0a9be7d24c55a0f9e1d2c3b4a5968778695a4b3c2d1e0f9a8b7c6d5e4f3a"

# Hybrid mode, as podman runs here: v1 controllers plus an empty v2 hierarchy.
V1_CGROUP = f"""12:cpu,cpuacct:/libpod_parent/libpod-{CID}
11:memory:/libpod_parent/libpod-{CID}
0::/libpod_parent/libpod-{CID}
"""
V1_MOUNTINFO_HOST_VIEW = """\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
35 30 0:31 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
36 30 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
37 30 0:33 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
"""
# Inside a container the v1 mount's root is the container's own cgroup.
V1_MOUNTINFO_CONTAINER_VIEW = (
    f"400 390 0:32 /libpod_parent/libpod-{CID} /sys/fs/cgroup/cpu,cpuacct ro"
    " - cgroup cgroup rw,cpu,cpuacct\n"
    f"401 390 0:57 /containers/storage/overlay-containers/{CID}/userdata/hostname"
    " /etc/hostname rw - ext4 /dev/sda1 rw\n"
)
V2_CGROUP = "0::/kubepods.slice/pod1.slice/cri-containerd-abc.scope\n"
V2_MOUNTINFO = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("quota", "concurrency", "threads", "writers"),
    [
        (2.0, 1, 2, 2),
        (2.0, 2, 1, 1),  # the planner on 2 cores
        (1.0, 4, 1, 1),  # never below one thread
        (0.5, 1, 1, 1),
        (3.0, 2, 1, 1),  # floor: 1.5 cores each is 1 thread
        (16.0, 4, 4, 2),  # two writer threads are all a checkpoint can use
        (2.99, 1, 2, 2),
        (3 * (2 / 3), 2, 1, 1),  # a share given as a fraction of cores
        (4.0, 0, 4, 2),  # concurrency 0 counts as 1
    ],
)
def test_plan_shares_the_quota(quota: float, concurrency: int, threads: int, writers: int) -> None:
    plan = cpu.plan(quota, concurrency)
    assert plan.torch_threads == plan.interop_threads == plan.loader_threads == threads
    assert plan.writer_threads == writers
    assert plan.concurrency == max(1, concurrency)


def test_cgroup_v1_limit_host_view(tmp_path: Path) -> None:
    """cfs quota/period under the v1 cpu mount, at the process's cgroup path."""
    folder = f"sys/fs/cgroup/cpu,cpuacct/libpod_parent/libpod-{CID}"
    root = write(
        tmp_path,
        {
            "proc/self/cgroup": V1_CGROUP,
            "proc/self/mountinfo": V1_MOUNTINFO_HOST_VIEW,
            f"{folder}/cpu.cfs_quota_us": "150000\n",
            f"{folder}/cpu.cfs_period_us": "100000\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cpu.cgroup_cpus(root) == 1.5


def test_cgroup_v1_limit_container_view(tmp_path: Path) -> None:
    """In a container the mount is the container's cgroup itself."""
    root = write(
        tmp_path,
        {
            "proc/self/cgroup": V1_CGROUP,
            "proc/self/mountinfo": V1_MOUNTINFO_CONTAINER_VIEW,
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "50000\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cpu.cgroup_cpus(root) == 0.5


def test_cgroup_v1_parent_limit_counts(tmp_path: Path) -> None:
    """The tightest limit along the path wins (a pod's limit above its container's)."""
    base = "sys/fs/cgroup/cpu,cpuacct/libpod_parent"
    root = write(
        tmp_path,
        {
            "proc/self/cgroup": V1_CGROUP,
            "proc/self/mountinfo": V1_MOUNTINFO_HOST_VIEW,
            f"{base}/libpod-{CID}/cpu.cfs_quota_us": "-1\n",
            f"{base}/libpod-{CID}/cpu.cfs_period_us": "100000\n",
            f"{base}/cpu.cfs_quota_us": "300000\n",
            f"{base}/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cpu.cgroup_cpus(root) == 3.0


def test_cgroup_v2_limit(tmp_path: Path) -> None:
    path = "sys/fs/cgroup/kubepods.slice/pod1.slice"
    root = write(
        tmp_path,
        {
            "proc/self/cgroup": V2_CGROUP,
            "proc/self/mountinfo": V2_MOUNTINFO,
            f"{path}/cri-containerd-abc.scope/cpu.max": "250000 100000\n",
            f"{path}/cpu.max": "400000 100000\n",
            "sys/fs/cgroup/kubepods.slice/cpu.max": "max 100000\n",
        },
    )
    assert cpu.cgroup_cpus(root) == 2.5


def test_cgroup_v2_namespaced(tmp_path: Path) -> None:
    """With a cgroup namespace the process sits at "/" and cpu.max is the mount's own."""
    root = write(
        tmp_path,
        {
            "proc/self/cgroup": "0::/\n",
            "proc/self/mountinfo": V2_MOUNTINFO,
            "sys/fs/cgroup/cpu.max": "100000 100000\n",
        },
    )
    assert cpu.cgroup_cpus(root) == 1.0


def test_no_limit(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "proc/self/cgroup": "0::/\n",
            "proc/self/mountinfo": V2_MOUNTINFO,
            "sys/fs/cgroup/cpu.max": "max 100000\n",
        },
    )
    assert cpu.cgroup_cpus(root) is None
    assert cpu.cgroup_cpus(tmp_path / "nothing-here") is None
    affinity = len(os.sched_getaffinity(0))
    assert cpu.cpu_quota(None, root) == affinity


def test_quota_order(tmp_path: Path) -> None:
    """The setting wins; a cgroup limit above the usable CPUs is capped at them."""
    root = write(
        tmp_path,
        {
            "proc/self/cgroup": "0::/\n",
            "proc/self/mountinfo": V2_MOUNTINFO,
            "sys/fs/cgroup/cpu.max": "6400000 100000\n",  # 64 cores
        },
    )
    assert cpu.cpu_quota(0.5, root) == 0.5
    assert cpu.cpu_quota(None, root) == len(os.sched_getaffinity(0))


def test_container_id_from_hostname_mount(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {"proc/self/mountinfo": V1_MOUNTINFO_CONTAINER_VIEW, "proc/self/cgroup": "0::/\n"},
    )
    assert container_id(root) == CID
    assert node_name("worker", "host-a", root) == f"worker@host-a-{CID[:12]}"
    # Docker's and podman's default hostname is the id itself: not written twice.
    assert node_name("worker", CID[:12], root) == f"worker@{CID[:12]}"


def test_container_id_from_cgroup(tmp_path: Path) -> None:
    docker = f"12:cpu,cpuacct:/docker/{CID}\n0::/\n"
    root = write(tmp_path, {"proc/self/mountinfo": V2_MOUNTINFO, "proc/self/cgroup": docker})
    assert container_id(root) == CID


def test_outside_a_container_names_differ(tmp_path: Path) -> None:
    """Two replicas on one hostname, not in containers: random suffixes."""
    root = write(tmp_path, {"proc/self/mountinfo": V2_MOUNTINFO, "proc/self/cgroup": "0::/\n"})
    assert container_id(root) is None
    names = {node_name("worker", "same-host", root) for _ in range(20)}
    assert len(names) == 20
    assert all(n.startswith("worker@same-host-") for n in names)
