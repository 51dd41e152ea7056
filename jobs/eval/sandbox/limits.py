"""What one sample may use: CPU, memory, processes, files, disk."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 10                        # RLIMIT_CPU, per process (SIGXCPU at cpu_s, SIGKILL a second later)
    memory_bytes: int = 1024**3            # RLIMIT_AS: each process's address space
    total_memory_bytes: int = 2 * 1024**3  # all the sample's processes together, /tmp included: a memory cgroup
    max_processes: int = 8                 # RLIMIT_NPROC (threads count too): the sample's uid, or user namespace
    file_bytes: int = 16 * 1024**2         # RLIMIT_FSIZE: also caps what the sample prints
    open_files: int = 64                   # RLIMIT_NOFILE
    disk_bytes: int = 64 * 1024**2         # the size of the sample's /tmp, a tmpfs

    def address_space(self, memory_cgroup: bool) -> int:
        """RLIMIT_AS for each of the sample's processes. Without a memory cgroup it is at most total_memory_bytes /
        max_processes: at most max_processes processes (threads included) exist at once, so together their address
        spaces, which bound the memory they can touch, stay within total_memory_bytes."""
        if memory_cgroup:
            return self.memory_bytes
        return min(self.memory_bytes, self.total_memory_bytes // max(1, self.max_processes))
