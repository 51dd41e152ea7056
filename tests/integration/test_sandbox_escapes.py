"""Hostile samples that escaped the sandbox before its minimal root, IPC namespace, size-capped /tmp and memory total:
host Unix sockets, SysV IPC, disk, memory across processes, the caller's files. Each runs with a root caller and with
an unprivileged one (nobody, from a root test process; or the test's own user when the tests do not run as root),
each must be a failure of the sample, and the machine must be left as it was.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import tempfile
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobs.eval import sandbox
from jobs.eval.sandbox import Limits, Outcome, SandboxUnavailable, run_program
from jobs.eval.sandbox.cgroup import own_memory_cgroup_dirs
from jobs.eval.sandbox.interpreter import root_layout
from tests.integration.sandbox_users import (
    NOBODY,
    copy_sandbox,
    make_home,
    run_program_as_nobody,
    sandboxed_processes,
)

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Caller:
    """Who calls the sandbox: its name, its uid, its home, and run_program as it calls it."""

    name: str
    uid: int
    home: Path
    run: Callable[[str, float, Limits], Outcome]


@pytest.fixture(scope="module", autouse=True)
def sandbox_here() -> None:
    try:
        sandbox.isolation()
    except SandboxUnavailable as e:
        pytest.skip(f"no sandbox on this machine: {e}")


@pytest.fixture(scope="module")
def nobody() -> Iterator[Caller]:
    copy = copy_sandbox(Path(tempfile.mkdtemp(prefix="clusterft-sandbox-test-")))
    home = make_home(Path("/home" if os.access("/home", os.W_OK) else "/var/tmp", f"clusterft-test-{uuid.uuid4().hex}"))
    try:
        yield Caller("nobody", NOBODY, home, lambda source, timeout_s, limits: run_program_as_nobody(
            source, timeout_s, limits, pythonpath=copy, home=home))
    finally:
        shutil.rmtree(copy)
        shutil.rmtree(home)


@pytest.fixture(params=["root", "unprivileged"])
def caller(request: pytest.FixtureRequest) -> Caller:
    if os.geteuid() != 0:
        if request.param == "root":
            pytest.skip("the tests do not run as root")
        return Caller("self", os.getuid(), Path.home(), run_program)
    if request.param == "root":
        return Caller("root", 0, Path.home(), run_program)
    return request.getfixturevalue("nobody")


@pytest.fixture
def unharmed() -> Iterator[None]:
    """After the test: no process of a sample left, no work directory or memory cgroup of the sandbox left."""
    processes, dirs, cgroups = set(sandboxed_processes()), sandbox_dirs(), sandbox_cgroups()
    yield
    assert not set(sandboxed_processes()) - processes, "processes of the sample survived it"
    assert sandbox_dirs() <= dirs, "a work directory was left behind"
    assert sandbox_cgroups() <= cgroups, "a memory cgroup was left behind"


def sandbox_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("clusterft-sandbox-")}


def sandbox_cgroups() -> set[Path]:
    return {p for directory, _ in own_memory_cgroup_dirs() for p in directory.glob("clusterft-sandbox-*")}


def test_host_unix_sockets_are_out_of_reach(caller: Caller, unharmed: None) -> None:
    """A path socket (a database's, say) does not exist in the sample's root; an abstract one belongs to the host's
    network namespace."""
    where = Path(tempfile.mkdtemp(prefix="clusterft-test-", dir="/run" if os.access("/run", os.W_OK) else None))
    where.chmod(0o755)
    path, abstract = str(where / "db.sock"), f"\0clusterft-test-{uuid.uuid4().hex}"
    try:
        with socket.socket(socket.AF_UNIX) as listener, socket.socket(socket.AF_UNIX) as abstract_listener:
            listener.bind(path)
            os.chmod(path, 0o777)  # any uid could connect, outside the sandbox
            abstract_listener.bind(abstract)
            for server, address in ((listener, path), (abstract_listener, abstract)):
                server.listen()
                with socket.socket(socket.AF_UNIX) as client:
                    client.connect(address)  # the listeners are real: the test process reaches them
                    server.accept()[0].close()
            source = textwrap.dedent(f"""
                import socket
                for address in ({path!r}, {abstract!r}):
                    try:
                        socket.socket(socket.AF_UNIX).connect(address)
                        print("CONNECTED", repr(address))
                    except OSError as e:
                        print("refused:", type(e).__name__)
                socket.socket(socket.AF_UNIX).connect({path!r})
            """)
            outcome = caller.run(source, TIMEOUT_S, Limits())
            assert (outcome.passed, outcome.kind) == (False, "crash"), outcome.output
            assert "FileNotFoundError" in outcome.detail and "CONNECTED" not in outcome.output, outcome.output
            assert "refused: ConnectionRefusedError" in outcome.output, outcome.output  # the abstract one
            for server in (listener, abstract_listener):
                server.settimeout(0.5)
                with pytest.raises(TimeoutError):
                    server.accept()
    finally:
        shutil.rmtree(where)


def sysv_keys(kind: str) -> set[int]:
    lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
    return {int(line.split()[0]) for line in lines}


def test_sysv_ipc_dies_with_the_sample(caller: Caller, unharmed: None) -> None:
    """Shared memory (64 MiB, touched), a message queue and a semaphore set, never removed: they lived in the
    sample's own IPC namespace and went with it."""
    key = 0x0C1F0000 + secrets.randbelow(0xFFFF)
    source = textwrap.dedent(f"""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmat.restype = ctypes.c_void_p
        size, create = 64 * 1024**2, 0o1000 | 0o666
        shm = libc.shmget({key}, ctypes.c_size_t(size), create)
        address = libc.shmat(shm, None, 0)
        ctypes.memset(address, 1, size)
        ids = shm, libc.msgget({key}, create), libc.semget({key}, 1, create)
        assert min(ids) >= 0, ctypes.get_errno()
        print("created", ids, flush=True)
        os._exit(0)
    """)
    outcome = caller.run(source, TIMEOUT_S, Limits())
    assert (outcome.passed, outcome.kind, outcome.detail) == (False, "crash", "exited before the tests finished")
    assert "created" in outcome.output, outcome.output
    for kind in ("shm", "msg", "sem"):
        assert key not in sysv_keys(kind), f"the sample's {kind} outlived it"


@pytest.mark.parametrize("filling", [
    "for i in range(1000):\n    open(f'/tmp/fill-{i}', 'wb').write(b'x' * 4 * 1024**2)\n    written += 4 * 1024**2\n",
    "for i in range(10**6):\n    open(f'/tmp/empty-{i}', 'wb').close()\n",
], ids=["big-files", "many-empty-files"])
def test_tmp_is_capped_in_total(caller: Caller, filling: str, unharmed: None) -> None:
    limits = Limits(disk_bytes=16 * 1024**2)
    source = f"written = 0\ntry:\n{textwrap.indent(filling, '    ')}finally:\n    print('wrote', written)\n"
    outcome = caller.run(source, TIMEOUT_S * 3, limits)
    assert (outcome.passed, outcome.kind) == (False, "crash"), outcome.output
    assert "No space left on device" in outcome.detail, outcome.output
    assert int(outcome.output.split("wrote")[1].split()[0]) <= limits.disk_bytes, outcome.output


def test_memory_is_capped_across_processes(caller: Caller, unharmed: None) -> None:
    """Four processes touching 600 MB each, 1 GiB in all allowed: a memory cgroup kills, or (no cgroup) each
    process's address space is a share of the total and the allocations fail."""
    source = textwrap.dedent("""
        import os, time
        size, children = 600 * 1024**2, []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                block = b"\\x01" * size
                time.sleep(3)
                os._exit(0)
            children.append(pid)
        block = b"\\x01" * size
        time.sleep(3)
        statuses = [os.waitpid(pid, 0)[1] for pid in children]
        assert statuses == [0, 0, 0], statuses
    """)
    limits = Limits(memory_bytes=1024**3, total_memory_bytes=1024**3)
    outcome = caller.run(source, TIMEOUT_S * 3, limits)
    assert (outcome.passed, outcome.kind) == (False, "memory"), outcome


def test_the_callers_files_are_not_there(caller: Caller, unharmed: None) -> None:
    """A 0600 file in the caller's home, the home itself, /root, world-readable host files outside what the
    interpreter needs: none exists in the sample's root."""
    secret = caller.home / f".clusterft-test-token-{uuid.uuid4().hex}"
    token = f"sk-fake-{uuid.uuid4().hex}"
    secret.write_text(token)
    os.chown(secret, caller.uid, caller.uid)
    secret.chmod(0o600)
    elsewhere = [str(caller.home), "/root", "/home", "/etc/passwd", "/etc/hostname", "/run", "/var", str(REPO)]
    source = textwrap.dedent(f"""
        import json, os
        print("ROOT", json.dumps(sorted(os.listdir("/"))))
        print("THERE", [path for path in {elsewhere!r} if os.path.exists(path)])
        print(open({str(secret)!r}).read())
    """)
    try:
        outcome = caller.run(source, TIMEOUT_S, Limits())
    finally:
        secret.unlink()
    assert (outcome.passed, outcome.kind) == (False, "crash"), outcome.output
    assert "FileNotFoundError" in outcome.detail and token not in outcome.output, outcome.output
    assert "THERE []" in outcome.output, outcome.output
    binds = root_layout(os.path.realpath(sandbox.sample_python())).binds
    allowed = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "dev", "proc", "tmp"}
    allowed |= {Path(b).parts[1] for b in binds}
    root = json.loads(outcome.output.split("ROOT", 1)[1].splitlines()[0])
    assert set(root) <= allowed, root


def test_detail_is_one_short_printable_line(caller: Caller) -> None:
    """What a result file (and so an MLflow artifact) gets of a sample's output: one line, bounded, no escapes."""
    source = "raise ValueError('\\x1b[2J\\x1b[31m' + 'A' * 10000 + '\\rforged\\x07')\n"
    outcome = caller.run(source, TIMEOUT_S, Limits())
    assert (outcome.passed, outcome.kind) == (False, "crash"), outcome.output
    assert outcome.detail.isprintable() and len(outcome.detail) <= 200, outcome.detail
    assert "\x1b" not in outcome.detail and "\r" not in outcome.detail
