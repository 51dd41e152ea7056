"""Processes of this host, identified so that a stale record never reaches a stranger.

A process is its pid and its start time (/proc/<pid>/stat field 22, in clock ticks since boot): once the process
ends, its pid may be given to another, whose start time differs. A local job's processes are those whose
environment carries the job's tag (set on the controller, inherited by its ranks), with their descendants. A signal
goes through a pidfd opened on the process whose start time was just checked, so no pid reuse can slip in between.
Linux only (/proc, pidfd); used by launchers/submit/local_job.py and tested by tests/unit/test_process_identity.py.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PROC = "/proc"


@dataclass(frozen=True)
class ProcessId:
    pid: int
    start: int  # clock ticks after boot

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        """The live process `pid` now is, or None (no such process, or a zombie)."""
        stat = _stat(pid)
        return cls(pid, stat[1]) if stat else None

    @classmethod
    def current(cls) -> ProcessId:
        found = cls.of(os.getpid())
        assert found is not None, "this process reads its own /proc entry"
        return found

    @classmethod
    def from_record(cls, data: Any) -> ProcessId | None:
        """{"pid": N, "start": T} as `as_record` wrote it; None for anything else."""
        if isinstance(data, dict) and all(type(data.get(key)) is int for key in ("pid", "start")):
            return cls(data["pid"], data["start"])
        return None

    def as_record(self) -> dict[str, int]:
        return {"pid": self.pid, "start": self.start}

    def alive(self) -> bool:
        return ProcessId.of(self.pid) == self

    def send(self, signum: int) -> bool:
        """Signal this very process; False when it has ended (its pid, free or reused, is left alone)."""
        try:
            handle = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return False
        try:
            if not self.alive():
                return False
            signal.pidfd_send_signal(handle, signum)
            return True
        except ProcessLookupError:
            return False
        finally:
            os.close(handle)


def carrying(variable: str, value: str, also: Sequence[int] = ()) -> list[ProcessId]:
    """The live processes whose environment holds variable=value, the pids `also` (checked alive by the caller), and
    their descendants (a child that cleared its environment is still found through its parent)."""
    entry = f"{variable}={value}".encode()
    parents: dict[int, int] = {}
    starts: dict[int, int] = {}
    found: list[int] = []
    for name in os.listdir(PROC):
        if not name.isdigit():
            continue
        pid = int(name)
        stat = _stat(pid)
        if stat is None:
            continue
        parents[pid], starts[pid] = stat
        if pid in also or entry in _environment(pid).split(b"\0"):
            found.append(pid)
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    members = list(found)
    for pid in members:  # grows while it is walked: every descendant, once
        members += [child for child in children.get(pid, []) if child not in members]
    return [ProcessId(pid, starts[pid]) for pid in members]


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process; None when it is gone or a zombie."""
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as handle:
            text = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()  # the command name, in parentheses, may hold spaces
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])  # fields 4 and 22 of proc(5)


def _environment(pid: int) -> bytes:
    try:
        with open(f"{PROC}/{pid}/environ", "rb") as handle:
            return handle.read()
    except OSError:  # gone, or another user's
        return b""
