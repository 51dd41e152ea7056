"""Run untrusted, model-written Python as hostile input: every sample in its own fresh, jailed subprocess.

    from jobs.eval.sandbox import Limits, run_program, run_many
    outcome = run_program(source, timeout_s=10.0, limits=Limits())
    outcome.passed, outcome.kind, outcome.detail        # True, "passed", ""   (outcome.output: tails of stdout/err)
    outcomes = run_many(sources, timeout_s=10.0, workers=4)   # in order; a progress line on stderr every 5 s
    isolation()                                         # what this machine gives: {"netns": True, ...}

`kind` is one of "passed", "assertion" (an AssertionError: a test failed), "timeout" (wall clock or CPU limit),
"syntax" (the program does not compile), "memory" (MemoryError: the address-space limit), "crash" (any other
exception, SystemExit, or an exit before the tests finished) and "killed" (a signal, e.g. SIGSEGV). A pass needs exit
status 0 *and* a per-run nonce (handed over on stdin) that the runner prints after the program returns, so an
`os._exit(0)` half-way is no pass. This contains damage; it does not defend the verdict against code that sets out
to forge one (the runner's exit statuses 3/4/5/6 can be faked with os._exit, a pass cannot be by accident).

Three processes per sample. The bootstrap B (`python -I -S -c`, a scrubbed environment, a new session) unshares new
mount, PID and network namespaces (plus a user namespace when not root) and forks I, PID 1 of the new PID namespace.
I mounts the sample's fresh temporary directory on /tmp and a new /proc, makes every other mount read-only
(mount_setattr; a remount per mount point on kernels before 5.12), forks the sample S and reaps until S exits; I's
exit tears the namespace down, killing whatever S left behind, before B returns. S sets its rlimits (CPU, address
space, processes, file size, open files, core 0); as root it drops to a uid of its own (SANDBOX_UID_BASE + a counter,
no passwd entry: RLIMIT_NPROC is not enforced for root, and a per-sample uid makes it a per-sample count); it sets
no_new_privs and execs a fresh `python -I -S` with PATH=/usr/bin:/bin, LANG=C.UTF-8, HOME=/tmp and nothing else.

So the sample sees: no network (a new netns with only a loopback that is down), only its own PIDs, / read-only,
/tmp = its own directory (deleted afterwards: writes to /tmp/anything land there), none of our variables. When the
wall clock runs out, B SIGKILLs I and returns once the namespace is empty; then the whole process group is SIGKILLed
(I also has PDEATHSIG=SIGKILL). Not covered: a sample's total memory is up to `max_processes * memory_bytes` (no
memory cgroup); CPU time is limited per process. Not root (a compute node): the user namespace maps the caller's uid
to itself, the read-only mounts protect the caller's files, and RLIMIT_NPROC counts the caller's processes in the
sample's user namespace on kernels since 5.14 (before, all of the user's processes).

If the namespaces cannot be had (not root and no unprivileged user namespaces, or a container without CAP_SYS_ADMIN),
run_program raises SandboxUnavailable unless the caller passes allow_network=True: accepting the risk, the sample then
runs with rlimits only (and, as root, a uid of its own): network, /tmp and, when not root, the caller's files open.
As root the sample's interpreter must be reachable by an unprivileged uid: sys.executable if it is, else
/usr/bin/python3 (HumanEval needs only the standard library); pass python=... to choose.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Literal

Kind = Literal["passed", "assertion", "timeout", "crash", "syntax", "memory", "killed"]
SANDBOX_UID_BASE = 1_800_000_000  # per-sample uids (and gids) are taken above this; no passwd entry is needed
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
_UNAVAILABLE = 97  # the bootstrap's exit status when isolation cannot be set up
_uids = itertools.count()
_uid_lock = threading.Lock()


class SandboxUnavailable(RuntimeError):
    """The kernel refused the namespaces (network, PID, mount) the sandbox relies on."""


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 10                     # RLIMIT_CPU, per process (SIGXCPU at cpu_s, SIGKILL a second later)
    memory_bytes: int = 1024**3         # RLIMIT_AS
    max_processes: int = 8              # RLIMIT_NPROC (threads count too): the sample's uid, or user namespace
    file_bytes: int = 16 * 1024**2      # RLIMIT_FSIZE: also caps what the sample prints
    open_files: int = 64                # RLIMIT_NOFILE


@dataclass(frozen=True)
class Outcome:
    passed: bool
    kind: Kind
    detail: str = ""
    output: str = field(default="", repr=False)  # the last 4 KB of the sample's stdout, then of its stderr


# B and I: runs as the caller (root or not), never runs sample code. argv[1] is the JSON config.
_BOOTSTRAP = r"""
import ctypes, errno, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
status = cfg["status_fd"]
def check(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
def mount(src, target, fstype, flags):
    enc = lambda s: None if s is None else s.encode()
    check(libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), None), f"mount {target}")
def refuse(error):
    if cfg["allow_network"]:
        return False
    os.write(2, f"sandbox: {error}\n".encode())
    os._exit(97)
def read_only_everything():
    if not cfg["force_remount"]:  # mount_setattr(AT_FDCWD, "/", AT_RECURSIVE, RDONLY | NOSUID), not NODEV: /dev/null
        attr = (ctypes.c_uint64 * 4)(0x1 | 0x2, 0, 0, 0)
        args = (ctypes.c_int(-100), b"/", ctypes.c_uint(0x8000), attr, ctypes.c_size_t(32))
        if libc.syscall(ctypes.c_long(442), *args) == 0:
            return "mount_setattr"
        if ctypes.get_errno() != errno.ENOSYS:
            check(-1, "mount_setattr")
    with open("/proc/self/mountinfo") as f:  # kernels before 5.12: remount each mount point read-only
        targets = [line.split()[4].encode().decode("unicode_escape") for line in f]
    for target in targets:
        try:
            kept = os.statvfs(target).f_flag & (2 | 4 | 8 | 1024 | 2048 | 4096)  # ST_* == MS_* for these
        except OSError:
            continue  # overmounted or vanished: not reachable from inside
        mount(None, target, None, 32 | 4096 | 1 | kept)  # MS_REMOUNT | MS_BIND | MS_RDONLY
    return "remount"
root = os.geteuid() == 0
uid, gid = os.getuid(), os.getgid()
info = {"root": root, "sample_uid": cfg["uid"] if root else uid}
try:
    check(libc.unshare(0x20000 | 0x20000000 | 0x40000000 | (0 if root else 0x10000000)), "unshare")
    if not root:
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    info.update(netns=True, pidns=True, mountns=True, userns=not root)
except OSError as e:
    refuse(f"cannot create namespaces ({e})")
    info.update(netns=False, pidns=False, mountns=False, userns=False)
init = os.fork()
if init:  # B: wait for I (once I is reaped its namespace is empty); SIGTERM from run_program on timeout kills I
    signal.signal(signal.SIGTERM, lambda *_: os.kill(init, signal.SIGKILL))
    _, wstatus = os.waitpid(init, 0)
    os._exit(os.waitstatus_to_exitcode(wstatus) if os.WIFEXITED(wstatus) else 98)
libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: matters only without a PID namespace
home = cfg["workdir"]
if info["mountns"]:
    try:
        mount(None, "/", None, 16384 | (1 << 18))  # MS_REC | MS_PRIVATE
        mount(cfg["workdir"], "/tmp", None, 4096)  # MS_BIND
        mount("proc", "/proc", "proc", 2 | 4 | 8)
        info["read_only_root"] = read_only_everything()
        mount(None, "/tmp", None, 32 | 4096 | 2 | 4)  # MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV: rw again
        home = "/tmp"
    except OSError as e:
        refuse(f"cannot set up the mounts ({e})")
        info["read_only_root"] = False
os.write(status, (json.dumps({"isolation": info}) + "\n").encode())
sample = os.fork()
if sample == 0:
    try:
        os.set_inheritable(status, False)
        os.chdir(home)
        lim = cfg["limits"]
        for res, value in ((resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1)),
                           (resource.RLIMIT_AS, lim["memory_bytes"]), (resource.RLIMIT_NPROC, lim["max_processes"]),
                           (resource.RLIMIT_FSIZE, lim["file_bytes"]), (resource.RLIMIT_NOFILE, lim["open_files"]),
                           (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(res, value if isinstance(value, tuple) else (value, value))
        if root:
            os.setgroups([])
            os.setresgid(cfg["uid"], cfg["uid"], cfg["uid"])
            os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
        check(libc.prctl(38, 1, 0, 0, 0), "no_new_privs")  # PR_SET_NO_NEW_PRIVS
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)
        os.execve(cfg["python"], [cfg["python"], "-I", "-S", "-c", cfg["runner"]], {**cfg["env"], "HOME": home})
    except BaseException as e:
        os.write(status, (json.dumps({"error": f"cannot start the sample: {e!r}"}) + "\n").encode())
        os._exit(98)
while True:
    pid, wstatus = os.wait()
    if pid == sample:
        break
os.write(status, (json.dumps({"wait": wstatus}) + "\n").encode())
os._exit(0)
"""

# S: the sample's interpreter. Reads the nonce from stdin, then runs program.py from its (private) cwd.
_RUNNER = r"""
import os, sys, traceback
def main():
    nonce = sys.stdin.readline().strip()
    with open("program.py", encoding="utf-8") as f:
        source = f.read()
    try:
        code = compile(source, "program.py", "exec")
    except (SyntaxError, ValueError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
        os._exit(3)
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
        sys.stdout.flush()
    except MemoryError:
        os.write(2, b"MemoryError\n")
        os._exit(6)
    except BaseException as e:
        try:
            sys.stdout.flush()
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:
            os.write(2, f"{type(e).__name__}\n".encode())
        os._exit(4 if isinstance(e, AssertionError) else 5)
    os.write(1, f"\n{nonce}\n".encode())
    os._exit(0)
main()
"""


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


def _next_uid() -> int:
    with _uid_lock:
        return SANDBOX_UID_BASE + (os.getpid() % 10_000) * 10_000 + next(_uids) % 10_000


def _tail(f: IO[bytes], n: int = 4096) -> str:
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - n))
    return f.read().decode("utf-8", "replace")


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


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


def _classify(wstatus: int, stdout: str, stderr: str, nonce: str, limits: Limits) -> Outcome:
    detail = _last_line(stderr)
    if os.WIFSIGNALED(wstatus):
        sig = signal.Signals(os.WTERMSIG(wstatus))
        if sig == signal.SIGXCPU:
            return Outcome(False, "timeout", f"CPU limit ({limits.cpu_s} s)")
        return Outcome(False, "killed", f"{sig.name}" + (f": {detail}" if detail else ""))
    code = os.WEXITSTATUS(wstatus)
    if code == 0:
        if stdout.rstrip().endswith(nonce):
            return Outcome(True, "passed")
        return Outcome(False, "crash", "exited before the tests finished")
    kinds: dict[int, Kind] = {3: "syntax", 4: "assertion", 6: "memory"}
    return Outcome(False, kinds.get(code, "crash"), detail or f"exit status {code}")


def _run(source: str, timeout_s: float, limits: Limits, allow_network: bool,
         python: str | None, force_remount: bool = False) -> tuple[Outcome, dict[str, Any]]:
    root = os.geteuid() == 0
    uid = _next_uid() if root else None
    workdir = tempfile.mkdtemp(prefix="clusterft-sandbox-")
    status_r, status_w = os.pipe()
    try:
        Path(workdir, "program.py").write_text(source, encoding="utf-8")
        if uid is not None:
            os.chown(workdir, uid, uid)
            os.chown(Path(workdir, "program.py"), uid, uid)
        config = {"status_fd": status_w, "workdir": workdir, "uid": uid, "allow_network": allow_network,
                  "python": sample_python(python), "runner": _RUNNER, "env": ENV, "limits": asdict(limits),
                  "force_remount": force_remount}
        nonce = secrets.token_hex(16)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, json.dumps(config)],
                stdin=subprocess.PIPE, stdout=out, stderr=err, env=dict(ENV), cwd="/",
                pass_fds=(status_w,), start_new_session=True)
            os.close(status_w)
            status_w = -1
            assert proc.stdin is not None
            try:
                proc.stdin.write(f"{nonce}\n".encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
            timed_out = False
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                proc.terminate()  # B SIGKILLs I and returns once I, so every process of the namespace, is gone
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers when there is no PID namespace; B if stuck
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
            status = _read_status(status_r)
            stdout, stderr = _tail(out), _tail(err)
            output = stdout.replace(f"\n{nonce}\n", "") + stderr
    finally:
        for fd in (status_r, status_w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)
    isolation = status.get("isolation", {})
    if timed_out:
        return Outcome(False, "timeout", f"wall clock ({timeout_s:g} s)", output), isolation
    if proc.returncode == _UNAVAILABLE:
        raise SandboxUnavailable(f"{_last_line(stderr)}; refusing to run model-written code without isolation. "
                                 "Pass allow_network=True to accept the risk (rlimits only).")
    if "error" in status or "wait" not in status:
        raise RuntimeError(f"sandbox failed (exit {proc.returncode}): {status.get('error') or stderr[-2000:]}")
    return replace(_classify(status["wait"], stdout, stderr, nonce, limits), output=output), isolation


def run_program(source: str, timeout_s: float = 10.0, limits: Limits = Limits(), *,
                allow_network: bool = False, python: str | None = None) -> Outcome:
    """Run `source` once in its own sandboxed subprocess; see the module docstring."""
    return _run(source, timeout_s, limits, allow_network, python)[0]


def isolation(python: str | None = None, allow_network: bool = False) -> dict[str, Any]:
    """What the sandbox gets on this machine (runs an empty program): root, sample_uid, netns, pidns, mountns, userns,
    read_only_root ("mount_setattr" or "remount"). Raises SandboxUnavailable as run_program does."""
    return _run("", 10.0, Limits(), allow_network, python)[1]


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
