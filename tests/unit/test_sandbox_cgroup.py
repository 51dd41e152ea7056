"""Finding the caller's memory cgroup from /proc/self/mountinfo and /proc/self/cgroup (texts as the kernel writes
them), and the fallback bound on memory when there is no cgroup."""

from __future__ import annotations

from pathlib import Path

from jobs.eval.sandbox import Limits
from jobs.eval.sandbox.cgroup import memory_cgroup_dirs

HYBRID_MOUNTS = """\
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate
34 25 0:30 / /sys/fs/cgroup/memory rw,nosuid shared:8 - cgroup cgroup rw,memory
35 25 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct
"""
HYBRID_CGROUPS = "4:memory:/process_api/abc\n3:cpu,cpuacct:/\n0::/user.slice\n"


def test_hybrid_v1_memory_and_a_v2_hierarchy_without_it() -> None:
    assert memory_cgroup_dirs(HYBRID_MOUNTS, HYBRID_CGROUPS) == [
        (Path("/sys/fs/cgroup/unified/user.slice"), 2),  # tried first: used only if it gives children memory
        (Path("/sys/fs/cgroup/memory/process_api/abc"), 1),
    ]


def test_unified_v2_and_a_mount_that_shows_only_a_subtree() -> None:
    mounts = "29 23 0:26 /job_7 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert memory_cgroup_dirs(mounts, "0::/job_7/step_0\n") == [(Path("/sys/fs/cgroup/step_0"), 2)]
    assert memory_cgroup_dirs(mounts, "0::/elsewhere\n") == []


def test_escaped_mount_points() -> None:
    mounts = r"34 25 0:30 / /cg\040mem rw - cgroup cgroup rw,memory" + "\n"
    assert memory_cgroup_dirs(mounts, "7:memory:/a\n") == [(Path("/cg mem/a"), 1)]


def test_without_a_cgroup_the_address_spaces_add_up_to_the_total() -> None:
    limits = Limits(memory_bytes=1024**3, total_memory_bytes=2 * 1024**3, max_processes=8)
    assert limits.address_space(memory_cgroup=True) == 1024**3
    assert limits.address_space(memory_cgroup=False) * limits.max_processes <= limits.total_memory_bytes
    assert Limits(memory_bytes=64 * 1024**2).address_space(memory_cgroup=False) == 64 * 1024**2
