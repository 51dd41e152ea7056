"""The sample's memory cgroup: a child of the caller's own memory cgroup, one per sample, that caps the memory of all
the sample's processes together (its /tmp, a tmpfs, is charged to it too); removed once the sample is gone.

cgroup v2 is used where the caller's cgroup gives its children the memory controller, which the kernel allows only
to a cgroup holding no processes of its own (in practice: a caller in the root cgroup). Otherwise cgroup v1's memory
hierarchy, where any cgroup may have limited children. Creating one needs write access to the caller's cgroup (root,
or a cgroup delegated to the caller); where there is none, `memory_cgroup` yields None and the sample's total is
bounded by its rlimits instead (Limits.address_space).
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Version = Literal[1, 2]
_names = itertools.count()


@dataclass(frozen=True)
class MemoryCgroup:
    """One sample's memory cgroup: its directory, and the cgroup version of the hierarchy it is in."""

    path: Path
    version: Version

    def add(self, pid: int) -> bool:
        """Move process `pid` (and so all it forks later) into the cgroup; False where the kernel refuses."""
        try:
            (self.path / "cgroup.procs").write_text(str(pid))
            return True
        except OSError:
            return False

    def limit(self, limit_bytes: int) -> None:
        """Cap the memory, and swap, of every process in it together; OSError where the kernel refuses."""
        if self.version == 2:
            (self.path / "memory.max").write_text(str(limit_bytes))
            _write_if_present(self.path / "memory.swap.max", 0)
            _write_if_present(self.path / "memory.oom.group", 1)  # an OOM kill takes the whole sample
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            _write_if_present(self.path / "memory.memsw.limit_in_bytes", limit_bytes)  # no swapping past it

    def oom_kills(self) -> int:
        """How many processes the kernel killed because the cgroup ran out of memory."""
        events = self.path / ("memory.events" if self.version == 2 else "memory.oom_control")
        for line in events.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        """rmdir, retried briefly: the last process may still be leaving it."""
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)


def _write_if_present(path: Path, value: int) -> None:
    if path.exists():
        path.write_text(str(value))


def _unescape(field: str) -> str:
    """A mountinfo path field: spaces, tabs, newlines and backslashes are written as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _relative(own: str, mount_root: str) -> str | None:
    """`own` (a cgroup path) relative to the root of a mount of its hierarchy; None when the mount does not show it."""
    if mount_root == "/":
        return own.lstrip("/")
    if own == mount_root:
        return ""
    return own[len(mount_root) + 1:] if own.startswith(mount_root + "/") else None


def memory_cgroup_dirs(mountinfo: str, cgroups: str) -> list[tuple[Path, Version]]:
    """The caller's own cgroup directory in each mounted hierarchy that can hold the memory controller, v2 first,
    from the text of /proc/self/mountinfo and /proc/self/cgroup."""
    own_v2 = own_v1 = None
    for line in cgroups.splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and not controllers:
            own_v2 = path
        elif "memory" in controllers.split(","):
            own_v1 = path
    found: list[tuple[Path, Version]] = []
    for line in mountinfo.splitlines():
        mount, _, filesystem = line.partition(" - ")
        (fstype, _source, options), (mount_root, mountpoint) = filesystem.split()[:3], mount.split()[3:5]
        version: Version
        if fstype == "cgroup2" and own_v2 is not None:
            own, version = own_v2, 2
        elif fstype == "cgroup" and "memory" in options.split(",") and own_v1 is not None:
            own, version = own_v1, 1
        else:
            continue
        relative = _relative(own, _unescape(mount_root))
        if relative is not None:
            found.append((Path(_unescape(mountpoint), relative), version))
    return sorted(found, key=lambda dir_version: -dir_version[1])


@functools.cache
def own_memory_cgroup_dirs() -> list[tuple[Path, Version]]:
    try:
        return memory_cgroup_dirs(Path("/proc/self/mountinfo").read_text(), Path("/proc/self/cgroup").read_text())
    except (OSError, ValueError):
        return []


def _gives_children_memory(directory: Path) -> bool:
    try:
        return "memory" in (directory / "cgroup.subtree_control").read_text().split()
    except OSError:
        return False


def _create(limit_bytes: int) -> MemoryCgroup | None:
    for directory, version in own_memory_cgroup_dirs():
        if version == 2 and not _gives_children_memory(directory):
            continue
        cgroup = MemoryCgroup(directory / f"clusterft-sandbox-{os.getpid()}-{next(_names)}", version)
        try:
            cgroup.path.mkdir()
        except OSError:
            continue
        try:
            cgroup.limit(limit_bytes)
            return cgroup
        except OSError:
            cgroup.remove()
    return None


@contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[MemoryCgroup | None]:
    """A fresh memory cgroup capped at `limit_bytes` for one sample, removed on exit; None where none can be made."""
    cgroup = _create(limit_bytes)
    try:
        yield cgroup
    finally:
        if cgroup is not None:
            cgroup.remove()
