"""The caller's side of the sandbox: run one program (run_program) or many (run_many), each in its own jail.

For each sample: a work directory holding program.py, a memory cgroup where one can be made, then B (jail.py) under
the caller's interpreter with a JSON config; the nonce goes to the sample on stdin, I's reports come back on a pipe.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any

from .cgroup import MemoryCgroup, memory_cgroup
from .interpreter import SandboxUnavailable, root_layout, sample_python
from .limits import Limits
from .verdict import Outcome, classify, last_line

SANDBOX_UID_BASE = 1_800_000_000  # per-sample uids (and gids) are taken above this; no passwd entry is needed
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
JAIL = str(Path(__file__).with_name("jail.py"))
RUNNER = Path(__file__).with_name("sample.py").read_text(encoding="utf-8")
_UNAVAILABLE = 97  # the bootstrap's exit status when isolation cannot be set up
_uids = itertools.count()
_uid_lock = threading.Lock()


@dataclass(frozen=True)
class _Finished:
    """What a run left: B's exit status, whether the wall clock ran out, I's reports, tails of stdout and stderr."""

    returncode: int
    timed_out: bool
    status: dict[str, Any]
    stdout: str
    stderr: str


def _next_uid() -> int:
    with _uid_lock:
        return SANDBOX_UID_BASE + (os.getpid() % 10_000) * 10_000 + next(_uids) % 10_000


def _tail(f: IO[bytes], n: int = 4096) -> str:
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - n))
    return f.read().decode("utf-8", "replace")


def _read_status(fd: int, wait_s: float = 5.0) -> dict[str, Any]:
    """The JSON lines I wrote, merged; reads until EOF (every writer gone) or `wait_s`."""
    data, deadline = b"", time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0 and select.select([fd], [], [], left)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    merged: dict[str, Any] = {}
    for line in data.decode().splitlines():
        merged.update(json.loads(line))
    return merged


def _exits_within(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Whether `proc` exits within `timeout_s`, told the moment it does: Popen.wait(timeout) polls, up to 50 ms late."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # kernels before 5.3
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        return bool(select.select([pidfd], [], [], timeout_s)[0])
    finally:
        os.close(pidfd)


def _wait(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait for B; on the wall clock, SIGTERM it (B SIGKILLs I and returns once the namespace is empty). Then the
    whole process group is SIGKILLed: stragglers when there is no PID namespace, or B if stuck. True: timed out."""
    timed_out = not _exits_within(proc, timeout_s)
    if timed_out:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    return timed_out


def _launch(config: dict[str, Any], nonce: str, timeout_s: float, cgroup: MemoryCgroup | None) -> _Finished:
    """Start B; move it into `cgroup` while its interpreter starts (a move can take a while: an RCU grace period),
    then tell it on stdin whether that worked (a line "v1", "v2" or empty: B waits for it), then the nonce."""
    status_r, status_w = os.pipe()
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", JAIL, json.dumps({**config, "status_fd": status_w})],
                stdin=subprocess.PIPE, stdout=out, stderr=err, env=dict(ENV), cwd="/",
                pass_fds=(status_w,), start_new_session=True)
            os.close(status_w)
            status_w = -1
            assert proc.stdin is not None
            joined = f"v{cgroup.version}" if cgroup is not None and cgroup.add(proc.pid) else ""
            try:
                proc.stdin.write(f"{joined}\n{nonce}\n".encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
            timed_out = _wait(proc, timeout_s)
            return _Finished(proc.returncode, timed_out, _read_status(status_r), _tail(out), _tail(err))
    finally:
        for fd in (status_r, status_w):
            if fd >= 0:
                os.close(fd)


def _config(workdir: str, limits: Limits, allow_network: bool, python: str, force_remount: bool) -> dict[str, Any]:
    layout = root_layout(python)
    return {"workdir": workdir, "uid": _next_uid() if os.geteuid() == 0 else None, "allow_network": allow_network,
            "python": python, "runner": RUNNER, "env": ENV, "limits": asdict(limits),
            "address_space": {"cgroup": limits.address_space(True), "rlimits_only": limits.address_space(False)},
            "binds": layout.binds, "links": layout.links, "force_remount": force_remount}


def _judge(finished: _Finished, nonce: str, limits: Limits, timeout_s: float, oom_kills: int) -> Outcome:
    output = finished.stdout.replace(f"\n{nonce}\n", "") + finished.stderr
    if finished.timed_out:
        return Outcome(False, "timeout", f"wall clock ({timeout_s:g} s)", output)
    if finished.returncode == _UNAVAILABLE:
        raise SandboxUnavailable(f"{last_line(finished.stderr)}; refusing to run model-written code without "
                                 "isolation. Pass allow_network=True to accept the risk (rlimits only).")
    status = finished.status
    if "error" in status or "wait" not in status:
        raise RuntimeError(f"sandbox failed (exit {finished.returncode}): "
                           f"{status.get('error') or finished.stderr[-2000:]}")
    verdict = classify(status["wait"], finished.stdout, finished.stderr, nonce, limits, oom_kills)
    return replace(verdict, output=output)


def run_sandboxed(source: str, timeout_s: float, limits: Limits, allow_network: bool, python: str | None,
                  force_remount: bool = False) -> tuple[Outcome, dict[str, Any]]:
    """run_program, and what isolation the sample got; force_remount: the path for kernels before 5.12."""
    interpreter = os.path.realpath(sample_python(python))
    nonce = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="clusterft-sandbox-", ignore_cleanup_errors=True) as workdir, \
            memory_cgroup(limits.total_memory_bytes) as cgroup:
        Path(workdir, "program.py").write_text(source, encoding="utf-8")
        config = _config(workdir, limits, allow_network, interpreter, force_remount)
        finished = _launch(config, nonce, timeout_s, cgroup)
        oom_kills = cgroup.oom_kills() if cgroup is not None else 0
    return _judge(finished, nonce, limits, timeout_s, oom_kills), finished.status.get("isolation", {})


def run_program(source: str, timeout_s: float = 10.0, limits: Limits = Limits(), *,
                allow_network: bool = False, python: str | None = None) -> Outcome:
    """Run `source` once in its own sandboxed subprocess; see the package docstring."""
    return run_sandboxed(source, timeout_s, limits, allow_network, python)[0]


def isolation(python: str | None = None, allow_network: bool = False) -> dict[str, Any]:
    """What the sandbox gets on this machine (runs an empty program): root, sample_uid, memory_cgroup ("v1", "v2" or
    False), netns, pidns, mountns, ipcns, userns, minimal_root, read_only_root ("mount_setattr" or "remount").
    Raises SandboxUnavailable as run_program does."""
    return run_sandboxed("", 10.0, Limits(), allow_network, python)[1]


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (SLURM's cgroup/affinity binding), not `os.cpu_count()`,
    which counts the host's cores — a pool that large on a 10-core allocation of a 128-core node times programs out."""
    return len(os.sched_getaffinity(0)) or 1


def run_many(programs: Sequence[str], timeout_s: float = 10.0, limits: Limits = Limits(), *,
             workers: int | None = None, allow_network: bool = False, python: str | None = None,
             progress_every_s: float = 5.0) -> list[Outcome]:
    """run_program over `programs` with `workers` concurrent sandboxes (default: the CPUs this process may run on —
    under SLURM the job's allocation, not the host's cores); outcomes in order."""
    workers = workers or usable_cpus()
    outcomes: list[Outcome | None] = [None] * len(programs)
    start = last = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_program, source, timeout_s, limits, allow_network=allow_network, python=python): i
                   for i, source in enumerate(programs)}
        for done, future in enumerate(as_completed(futures), 1):
            outcomes[futures[future]] = future.result()
            now = time.monotonic()
            if now - last >= progress_every_s or done == len(programs):
                passed = sum(1 for o in outcomes if o is not None and o.passed)
                print(f"[sandbox] {done}/{len(programs)} done, {passed} passed, {now - start:.1f} s",
                      file=sys.stderr, flush=True)
                last = now
    return [o for o in outcomes if o is not None]
