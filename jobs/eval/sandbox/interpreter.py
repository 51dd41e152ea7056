"""The sample's interpreter, and what of the host the sample's minimal root must hold for it to start.

The minimal root (built by I, see jail.py) holds read-only binds of /usr, of the top-level /bin, /sbin and /lib*
directories where they are directories (on merged-usr systems they are symlinks into /usr and are copied as
symlinks), and of the interpreter's own prefixes (sys.prefix, sys.base_prefix, sys.base_exec_prefix and the
directory of its executable, all as real paths): nothing else of the host.
"""

from __future__ import annotations

import functools
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TOP_LEVEL_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
SHADOWED = ("/tmp", "/proc", "/dev")  # the sandbox mounts its own there: an interpreter under them cannot be bound


class SandboxUnavailable(RuntimeError):
    """The kernel refused what the sandbox relies on (namespaces, mounts), or no usable interpreter was found."""


@dataclass(frozen=True)
class RootLayout:
    """What of the host the sample's root holds: directories bound read-only, and symlinks (path, target)."""

    binds: tuple[str, ...]
    links: tuple[tuple[str, str], ...]


def _world_executable(path: str) -> bool:
    real = Path(os.path.realpath(path))
    try:
        return real.stat().st_mode & 0o005 == 0o005 and all(p.stat().st_mode & stat.S_IXOTH for p in real.parents)
    except OSError:
        return False


def sample_python(python: str | None = None) -> str:
    """The interpreter samples run under: `python`, else sys.executable, else /usr/bin/python3 when sys.executable
    is not reachable by the unprivileged sample uid (as root)."""
    if python:
        return python
    if os.geteuid() != 0 or _world_executable(sys.executable):
        return sys.executable
    for candidate in (getattr(sys, "_base_executable", ""), "/usr/bin/python3", "/usr/local/bin/python3"):
        if candidate and _world_executable(candidate):
            return os.path.realpath(candidate)
    raise SandboxUnavailable("no Python interpreter reachable by an unprivileged uid: pass python=...")


def _prefixes(executable: str) -> list[str]:
    """sys.prefix, sys.base_prefix and sys.base_exec_prefix of `executable`, as it computes them when run with -I -S."""
    code = "import sys; print(sys.prefix); print(sys.base_prefix); print(sys.base_exec_prefix)"
    done = subprocess.run([executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"}, cwd="/", check=False)
    if done.returncode != 0:
        raise SandboxUnavailable(f"{executable} does not start: {done.stderr.strip()[-500:]}")
    return done.stdout.splitlines()


def _outermost(paths: list[str]) -> tuple[str, ...]:
    """The paths not inside another of them, sorted."""
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return tuple(kept)


@functools.lru_cache(maxsize=8)
def root_layout(executable: str) -> RootLayout:
    """The minimal root for the interpreter `executable` (a real path); asks the interpreter once per process."""
    wanted = ["/usr", os.path.dirname(executable), *_prefixes(executable)]
    links = []
    for name in TOP_LEVEL_DIRS:
        path = f"/{name}"
        if os.path.islink(path):
            links.append((path, os.readlink(path)))
        elif os.path.isdir(path):
            wanted.append(path)
    binds = _outermost([os.path.realpath(p) for p in wanted if os.path.isdir(p) and os.path.realpath(p) != "/"])
    shadowed = [b for b in binds if any(b == s or b.startswith(f"{s}/") for s in SHADOWED)]
    if shadowed:
        raise SandboxUnavailable(f"the interpreter {executable} needs {shadowed[0]}, where the sandbox mounts its "
                                 "own /tmp, /proc or /dev: pass python=... (an interpreter installed elsewhere)")
    return RootLayout(binds, tuple(links))
