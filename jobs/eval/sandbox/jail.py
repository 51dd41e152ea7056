"""B and I, the jailers: run by the caller's interpreter as `python -I -S jail.py CONFIG`, as the caller (root or not).
They never run sample code; S, the sample, is forked by I and execs a fresh interpreter (sample.py).

B waits for a line on stdin: by then the caller has moved it into the sample's memory cgroup (the line says which
cgroup version, or is empty: no cgroup). B unshares new mount, PID, network and IPC namespaces (plus a user namespace
when not root) and forks I, PID 1 of the new PID namespace; B then waits for I. I builds the sample's minimal root (a
tmpfs holding read-only binds of what the interpreter needs, a few devices, a new /proc and a size-capped tmpfs /tmp
with program.py), makes it read-only, pivots into it, detaches the old root, forks S and reaps until S exits. CONFIG
is JSON, made by run.py; I reports on the inherited status fd in JSON lines. The rest of stdin is the sample's.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import resource
import signal
import sys
from typing import Any, NoReturn

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
KEPT_FLAGS = 0x2 | 0x4 | 0x8 | 0x400 | 0x800  # statvfs ST_NOSUID..ST_NODIRATIME, equal to their MS_* flags
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, AT_FDCWD, AT_RECURSIVE = 0x1, 0x2, -100, 0x8000
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
SYS_MOUNT_SETATTR = 442  # one number on every architecture (it came after the syscall tables were unified)
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "ppc64": 203, "s390x": 217}
UNAVAILABLE, FAILED = 97, 98
DEVICES = ("null", "zero", "random", "urandom")
DEVICE_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                ("stderr", "/proc/self/fd/2"))

libc = ctypes.CDLL(None, use_errno=True)


def check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def encoded(text: str | None) -> bytes | None:
        return None if text is None else text.encode()
    check(libc.mount(encoded(source), encoded(target), encoded(fstype), ctypes.c_ulong(flags), encoded(data)),
          f"mount {target}")


def report(status_fd: int, **fields: Any) -> None:
    os.write(status_fd, (json.dumps(fields) + "\n").encode())


def refuse(cfg: dict[str, Any], error: str) -> None:
    """No isolation, no sample: exit, unless the caller accepted the risk (allow_network)."""
    if not cfg["allow_network"]:
        os.write(2, f"sandbox: {error}\n".encode())
        os._exit(UNAVAILABLE)


def read_line(fd: int) -> str:
    """One line from `fd`, read a byte at a time: what follows it stays there, for the sample."""
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            break
        line += byte
    return line.decode().strip()


def unshare_namespaces(root: bool) -> None:
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | (0 if root else CLONE_NEWUSER)),
          "unshare")
    if not root:
        uid, gid = os.getuid(), os.getgid()
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)


def bind(source: str, target: str) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "w").close()
    mount(source, target, None, MS_BIND | MS_REC)


def populate_dev(new_root: str) -> None:
    os.mkdir(f"{new_root}/dev")
    for name in DEVICES:
        bind(f"/dev/{name}", f"{new_root}/dev/{name}")
    for name, target in DEVICE_LINKS:
        os.symlink(target, f"{new_root}/dev/{name}")


def mount_points_under(directory: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:  # paths there escape space, tab, newline and backslash in octal
        targets = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]) for line in f]
    return [t for t in targets if t == directory or t.startswith(f"{directory}/")]


def make_read_only(directory: str, force_remount: bool) -> str:
    """Every mount at and under `directory` read-only and nosuid: one mount_setattr, or on kernels before 5.12 (or
    when forced) one remount per mount point, keeping the flags a user namespace may not clear."""
    if not force_remount:
        attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
        args = (ctypes.c_int(AT_FDCWD), directory.encode(), ctypes.c_uint(AT_RECURSIVE), attr, ctypes.c_size_t(32))
        if libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), *args) == 0:
            return "mount_setattr"
        if ctypes.get_errno() != errno.ENOSYS:
            check(-1, "mount_setattr")
    for target in mount_points_under(directory):
        try:
            kept = os.statvfs(target).f_flag & KEPT_FLAGS
        except OSError:
            continue  # overmounted or vanished: not reachable from inside
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | kept)
    return "remount"


def pivot_into(new_root: str) -> None:
    """Make `new_root` the root of this mount namespace and detach the old one: nothing else of the host remains."""
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(errno.ENOSYS, f"pivot_root: no syscall number known for {os.uname().machine}")
    os.chdir(new_root)
    check(libc.syscall(ctypes.c_long(number), b".", b"."), "pivot_root")  # the old root now lies on top of "/"
    check(libc.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/")


def enter_minimal_root(cfg: dict[str, Any], program: bytes, ids: tuple[int, int]) -> str:
    """Build the sample's root on a tmpfs over the work directory and pivot into it; how it was made read-only."""
    new, limits = cfg["workdir"], cfg["limits"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates to the host
    mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=1024,mode=0755")
    for path in cfg["binds"]:
        bind(path, new + path)
    for path, target in cfg["links"]:
        os.symlink(target, new + path)
    populate_dev(new)
    os.mkdir(f"{new}/proc")
    mount("proc", f"{new}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.mkdir(f"{new}/tmp")
    read_only = make_read_only(new, cfg["force_remount"])
    size = limits["disk_bytes"] + len(program) + 4096  # program.py is not the sample's to count; never 0 (unlimited)
    inodes = max(64, limits["disk_bytes"] // 4096)
    mount("tmpfs", f"{new}/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
          f"size={size},nr_inodes={inodes},mode=0700,uid={ids[0]},gid={ids[1]}")
    with open(f"{new}/tmp/program.py", "wb") as f:
        f.write(program)
    os.chown(f"{new}/tmp/program.py", *ids)
    pivot_into(new)
    return read_only


def set_rlimits(limits: dict[str, int], address_space: int) -> None:
    cpu = limits["cpu_s"]
    for res, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, address_space, address_space),
                            (resource.RLIMIT_NPROC, limits["max_processes"], limits["max_processes"]),
                            (resource.RLIMIT_FSIZE, limits["file_bytes"], limits["file_bytes"]),
                            (resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"]),
                            (resource.RLIMIT_CORE, 0, 0)):
        resource.setrlimit(res, (soft, hard))


def become_sample(cfg: dict[str, Any], info: dict[str, Any], home: str, ids: tuple[int, int]) -> NoReturn:
    """S, between fork and exec: rlimits, (as root) its own uid, no_new_privs, then the sample's interpreter."""
    try:
        os.set_inheritable(cfg["status_fd"], False)
        os.chdir(home)
        set_rlimits(cfg["limits"], cfg["address_space"]["cgroup" if info["memory_cgroup"] else "rlimits_only"])
        if info["root"]:
            os.setgroups([])
            os.setresgid(ids[1], ids[1], ids[1])
            os.setresuid(ids[0], ids[0], ids[0])
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        python = cfg["python"]
        os.execve(python, [python, "-I", "-S", "-c", cfg["runner"]], {**cfg["env"], "HOME": home})
    except BaseException as e:
        report(cfg["status_fd"], error=f"cannot start the sample: {e!r}")
        os._exit(FAILED)


def run_init(cfg: dict[str, Any], info: dict[str, Any]) -> NoReturn:
    """I: the sample's root, then S; reaps until S exits. Its exit empties the PID namespace."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # matters only without a PID namespace
    os.umask(0o022)
    ids = (cfg["uid"], cfg["uid"]) if info["root"] else (os.getuid(), os.getgid())
    home, info["read_only_root"], info["minimal_root"] = cfg["workdir"], False, False
    program_path = os.path.join(cfg["workdir"], "program.py")
    if info["mountns"]:
        try:
            with open(program_path, "rb") as f:
                info["read_only_root"] = enter_minimal_root(cfg, f.read(), ids)
            home, info["minimal_root"] = "/tmp", True
        except OSError as e:
            refuse(cfg, f"cannot set up the mounts ({e})")
            libc.umount2(cfg["workdir"].encode(), MNT_DETACH)  # the host's work directory again
    if info["root"] and not info["minimal_root"]:  # the sample runs in the host's work directory: make it its own
        for path in (cfg["workdir"], program_path):
            os.chown(path, *ids)
    report(cfg["status_fd"], isolation=info)
    sample = os.fork()
    if sample == 0:
        become_sample(cfg, info, home, ids)
    while True:
        pid, wstatus = os.wait()
        if pid == sample:
            break
    report(cfg["status_fd"], wait=wstatus)
    os._exit(0)


def wait_for_init(init: int) -> NoReturn:
    """B: once I is reaped its namespace is empty. SIGTERM (run.py, on a timeout) kills I."""
    signal.signal(signal.SIGTERM, lambda *_: os.kill(init, signal.SIGKILL))
    _, wstatus = os.waitpid(init, 0)
    os._exit(os.waitstatus_to_exitcode(wstatus) if os.WIFEXITED(wstatus) else FAILED)


def main(cfg: dict[str, Any]) -> NoReturn:
    """B."""
    root = os.geteuid() == 0
    memory_cgroup = read_line(0) or False  # the caller moved B into the sample's memory cgroup, or could not
    info: dict[str, Any] = {"root": root, "sample_uid": cfg["uid"] if root else os.getuid(),
                            "memory_cgroup": memory_cgroup}
    try:
        unshare_namespaces(root)
        isolated = True
    except OSError as e:
        refuse(cfg, f"cannot create namespaces ({e})")
        isolated = False
    info.update(netns=isolated, pidns=isolated, mountns=isolated, ipcns=isolated, userns=isolated and not root)
    init = os.fork()
    if init:
        wait_for_init(init)
    run_init(cfg, info)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
