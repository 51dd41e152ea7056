"""Helpers for the sandbox tests: run the sandbox as an unprivileged caller from a root test process, and find the
processes samples leave behind.

The unprivileged caller is nobody (uid and gid 65534) with a home of its own, running a copy of the sandbox package
under the interpreter samples use (one an unprivileged uid can reach). With deny_userns it is also denied user
namespaces: it runs in a child user namespace (uids 0-65535 mapped 1:1) whose max_user_namespaces is 0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from jobs.eval import sandbox
from jobs.eval.sandbox import SANDBOX_UID_BASE, Limits, Outcome

NOBODY = 65534

_AS_NOBODY = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
deny_userns, pythonpath, home, argv = sys.argv[1] == "deny-userns", sys.argv[2], sys.argv[3], sys.argv[4:]
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
pid = os.fork()
if pid == 0:
    if deny_userns:
        if libc.unshare(0x10000000) != 0:
            os._exit(90)
        os.write(ready_w, b"x")
        os.read(go_r, 1)
        with open("/proc/sys/user/max_user_namespaces", "w") as f:
            f.write("0")
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    os.chdir(home)
    os.execve(argv[0], argv, {"PYTHONPATH": pythonpath, "HOME": home, "PATH": "/usr/bin:/bin"})
if deny_userns:
    os.read(ready_r, 1)
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write("0 0 65536")
    os.write(go_w, b"x")
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""

_RUN_PROGRAM = r"""
import json, sys
from dataclasses import asdict
import sandbox
limits = sandbox.Limits(**json.loads(sys.argv[3]))
print(json.dumps(asdict(sandbox.run_program(sys.argv[1], float(sys.argv[2]), limits))))
"""


def copy_sandbox(directory: Path) -> Path:
    """A world-readable copy of the sandbox package in `directory` (to put on PYTHONPATH as `sandbox`)."""
    directory.chmod(0o755)
    copy = directory / "sandbox"
    shutil.copytree(Path(sandbox.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for path in [copy, *copy.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return directory


def make_home(directory: Path) -> Path:
    """A home for nobody: its own, mode 0700."""
    directory.mkdir(mode=0o700)
    os.chown(directory, NOBODY, NOBODY)
    return directory


def run_as_nobody(code: str, *args: str, pythonpath: Path, home: Path, deny_userns: bool = False,
                  timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -c code args...` as nobody, with the sandbox's copy on its path."""
    python = sandbox.sample_python()
    return subprocess.run([sys.executable, "-c", _AS_NOBODY, "deny-userns" if deny_userns else "allow-userns",
                           str(pythonpath), str(home), python, "-c", code, *args],
                          check=False, capture_output=True, text=True, timeout=timeout_s, cwd="/")


def run_program_as_nobody(source: str, timeout_s: float, limits: Limits, *, pythonpath: Path,
                          home: Path) -> Outcome:
    """run_program(source, timeout_s, limits), called by nobody."""
    done = run_as_nobody(_RUN_PROGRAM, source, str(timeout_s), json.dumps(asdict(limits)), pythonpath=pythonpath,
                         home=home, timeout_s=timeout_s + 120)
    assert done.returncode == 0, done.stderr
    return Outcome(**json.loads(done.stdout.splitlines()[-1]))


def sandboxed_processes() -> list[int]:
    """Processes on the machine that look like a sample's: those of a sandbox uid, and those of our uid or nobody's
    in a nested PID namespace (as root, only nobody's: other root processes there are not ours)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = dict(line.split(":", 1) for line in Path(f"/proc/{entry}/status").read_text().splitlines())
            except (OSError, ValueError):
                continue
            uid, nested = int(fields["Uid"].split()[0]), len(fields["NSpid"].split()) > 1
            callers = {NOBODY} if os.geteuid() == 0 else {os.getuid()}
            if uid >= SANDBOX_UID_BASE or (nested and uid in callers):
                found.append(int(entry))
    return found
