"""How a finished sample is judged: its Outcome from its exit status, its output and the run's nonce."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Literal

from .limits import Limits

Kind = Literal["passed", "assertion", "timeout", "crash", "syntax", "memory", "killed"]
DETAIL_CHARS = 200


@dataclass(frozen=True)
class Outcome:
    passed: bool
    kind: Kind
    detail: str = ""                              # one printable line, at most DETAIL_CHARS characters
    output: str = field(default="", repr=False)  # the last 4 KB of the sample's stdout, then of its stderr


def last_line(text: str) -> str:
    """The last non-blank line of `text`, cut to DETAIL_CHARS, every unprintable character (escape sequences,
    carriage returns, ...) replaced by "?": what a result file or a log may show of a sample's output."""
    lines = [line for line in text.splitlines() if line.strip()]
    line = lines[-1][:DETAIL_CHARS] if lines else ""
    return "".join(c if c.isprintable() else "?" for c in line)


def classify(wstatus: int, stdout: str, stderr: str, nonce: str, limits: Limits, oom_kills: int = 0) -> Outcome:
    """The Outcome of a sample that exited with `wstatus`; `oom_kills`: processes its memory cgroup's limit killed."""
    detail, signalled = last_line(stderr), os.WIFSIGNALED(wstatus)
    if signalled and os.WTERMSIG(wstatus) == signal.SIGXCPU:
        return Outcome(False, "timeout", f"CPU limit ({limits.cpu_s} s)")
    if not signalled and os.WEXITSTATUS(wstatus) == 0 and stdout.rstrip().endswith(nonce):
        return Outcome(True, "passed")
    if oom_kills:
        return Outcome(False, "memory", f"total memory limit ({limits.total_memory_bytes} bytes): "
                                        f"{oom_kills} process(es) killed")
    if signalled:
        name = signal.Signals(os.WTERMSIG(wstatus)).name
        return Outcome(False, "killed", name + (f": {detail}" if detail else ""))
    code = os.WEXITSTATUS(wstatus)
    if code == 0:
        return Outcome(False, "crash", "exited before the tests finished")
    kinds: dict[int, Kind] = {3: "syntax", 4: "assertion", 6: "memory"}
    return Outcome(False, kinds.get(code, "crash"), detail or f"exit status {code}")
