"""Hostile samples through jobs.eval.sandbox: each contained, counted as a failure of the right kind, the machine
unharmed.

Every sample is bounded by its wall-clock timeout (a few seconds). Durations are never asserted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.eval import sandbox
from jobs.eval.sandbox import Limits, SandboxUnavailable, run_many, run_program
from jobs.eval.sandbox.run import run_sandboxed
from tests.integration.sandbox_users import copy_sandbox, run_as_nobody, sandboxed_processes

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 4.0


@pytest.fixture(scope="module", autouse=True)
def isolation() -> dict[str, object]:
    try:
        info = sandbox.isolation()
    except SandboxUnavailable as e:
        pytest.skip(f"no sandbox on this machine: {e}")
    print(f"sandbox isolation here: {info}")
    return info


def process_count() -> int:
    return sum(1 for entry in os.listdir("/proc") if entry.isdigit())


def sandbox_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("clusterft-sandbox-")}


@pytest.mark.parametrize(("source", "kind", "detail"), [
    ("assert 1 + 1 == 2\n", "passed", ""),
    ("assert 1 + 1 == 3, 'arithmetic'\n", "assertion", "AssertionError: arithmetic"),
    ("def f(:\n", "syntax", "SyntaxError"),
    ("1 / 0\n", "crash", "ZeroDivisionError"),
    ("import sys\nsys.exit(0)\n", "crash", "SystemExit"),
    ("import os\nos._exit(0)\n", "crash", "exited before the tests finished"),
    ("import ctypes\nctypes.string_at(0)\n", "killed", "SIGSEGV"),
])
def test_outcome_kinds(source: str, kind: str, detail: str) -> None:
    outcome = run_program(source, TIMEOUT_S, Limits())
    assert (outcome.kind, outcome.passed) == (kind, kind == "passed"), outcome.output
    assert detail in outcome.detail


def test_infinite_loop_times_out_on_the_wall_clock() -> None:
    outcome = run_program("while True:\n    pass\n", 2.0, Limits(cpu_s=30))
    assert (outcome.passed, outcome.kind) == (False, "timeout")
    assert "wall clock" in outcome.detail


def test_cpu_limit_is_a_timeout_too() -> None:
    outcome = run_program("while True:\n    pass\n", 30.0, Limits(cpu_s=1))
    assert (outcome.passed, outcome.kind) == (False, "timeout")
    assert "CPU limit" in outcome.detail


def test_fork_bomb_is_contained_and_leaves_nothing_behind() -> None:
    already = set(sandboxed_processes())  # other work on this machine may use PID namespaces of its own
    before = process_count()
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    outcome = run_program(bomb, 3.0, Limits(max_processes=8))
    assert (outcome.passed, outcome.kind) == (False, "timeout")
    assert not set(sandboxed_processes()) - already, "processes of the sample survived it"
    # the machine is shared, so the total is printed, not compared
    print(f"processes on the machine: {before} before the fork bomb, {process_count()} after")

    counting = textwrap.dedent("""
        import os, time
        n = 0
        try:
            while True:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                n += 1
        except OSError as e:
            print("forked", n, e.errno)
    """)
    outcome = run_program(counting, 10.0, Limits(max_processes=8))
    forked = int(outcome.output.split("forked")[1].split()[0])
    assert outcome.passed and forked < 8, outcome.output  # RLIMIT_NPROC held
    assert not set(sandboxed_processes()) - already, "the sleeping children survived the sample"


@pytest.mark.parametrize("source", [
    "x = bytearray(8 * 1024**3)\n",
    "chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 1024**2))\n",
])
def test_multi_gb_allocation_is_a_memory_failure(source: str) -> None:
    outcome = run_program(source, 10.0, Limits(memory_bytes=1024**3))
    assert (outcome.passed, outcome.kind) == (False, "memory"), outcome.output


@pytest.fixture
def bashrc() -> Iterator[Path]:
    path = Path.home() / ".bashrc"
    before = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    yield path
    after = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    assert after == before, f"{path} changed"


def test_writing_outside_the_temporary_directory_fails(bashrc: Path) -> None:
    name = f"clusterft-pwned-{uuid.uuid4().hex}"
    targets = [Path.home() / name, REPO / name, Path("/var/tmp") / name, Path("/dev/shm") / name, Path("/") / name]
    dirs_before = sandbox_dirs()
    for target in [*targets, bashrc]:
        outcome = run_program(f"open({str(target)!r}, 'a').write('pwned\\n')\n", TIMEOUT_S, Limits())
        assert (outcome.passed, outcome.kind) == (False, "crash"), (target, outcome.output)
        # Refused, or not even there: the sample's root holds only what its interpreter needs, and its own /tmp.
        refused = ("PermissionError", "Read-only file system", "No such file or directory")
        assert any(word in outcome.detail for word in refused), (target, outcome.detail)
    for target in targets:
        assert not target.exists(), target
    assert sandbox_dirs() <= dirs_before, "a sandbox directory was left behind"


def test_tmp_is_the_samples_own_directory_and_is_discarded() -> None:
    host = Path(tempfile.gettempdir()) / f"clusterft-pwned-{uuid.uuid4().hex}"
    dirs_before = sandbox_dirs()
    source = f"open({str(Path('/tmp') / host.name)!r}, 'w').write('x')\nimport os\nprint(sorted(os.listdir('/tmp')))\n"
    outcome = run_program(source, TIMEOUT_S, Limits())
    assert outcome.passed, outcome.output
    assert f"['{host.name}', 'program.py']" in outcome.output  # /tmp inside holds only the sample's own files
    assert not host.exists() and not Path("/tmp", host.name).exists()
    assert sandbox_dirs() <= dirs_before


def test_no_network_even_to_a_real_local_listener() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            server.accept()[0].close()  # the listener is real: the test process reaches it
        source = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3).sendall(b'pwned')\n"
        outcome = run_program(source, TIMEOUT_S * 2, Limits())
        assert (outcome.passed, outcome.kind) == (False, "crash"), outcome.output
        assert "Network is unreachable" in outcome.detail or "refused" in outcome.detail, outcome.detail
        server.settimeout(0.5)
        with pytest.raises(TimeoutError):
            server.accept()


def test_environment_secrets_do_not_reach_the_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"sk-fake-{uuid.uuid4().hex}"
    monkeypatch.setenv("CLUSTERFT_FAKE_SECRET", secret)
    monkeypatch.setenv("HF_TOKEN", secret)
    source = textwrap.dedent("""
        import glob, os, sys
        print(dict(os.environ), sys.argv)
        for path in glob.glob("/proc/[0-9]*/environ"):  # the processes it can see: its own namespace
            try:
                print(path, open(path, "rb").read())
            except OSError:
                print(path, "unreadable")
        print(os.environ["CLUSTERFT_FAKE_SECRET"])
    """)
    outcome = run_program(source, TIMEOUT_S, Limits())
    assert (outcome.passed, outcome.kind) == (False, "crash") and "KeyError" in outcome.detail, outcome.output
    assert "'PATH': '/usr/bin:/bin'" in outcome.output
    assert secret not in outcome.output


def test_run_many_keeps_order_and_reports_progress(capsys: pytest.CaptureFixture[str]) -> None:
    programs = ["pass\n", "assert False\n", "def f(:\n", "while True: pass\n"] * 2
    outcomes = run_many(programs, 2.0, Limits(), workers=4, progress_every_s=0.0)
    assert [o.kind for o in outcomes] == ["passed", "assertion", "syntax", "timeout"] * 2
    assert "[sandbox] 8/8 done, 2 passed" in capsys.readouterr().err


def test_mount_fallback_for_kernels_without_mount_setattr() -> None:
    outcome, info = run_sandboxed("open('/dev/null', 'w').write('x')\nopen('/usr/x', 'w')\n", TIMEOUT_S, Limits(),
                                  False, None, force_remount=True)
    assert (info["read_only_root"], info["minimal_root"]) == ("remount", True)
    assert (outcome.kind, "Read-only file system" in outcome.detail) == ("crash", True), outcome.output


# Refusal: an unprivileged user who may not create user namespaces (built from root: see sandbox_users).
_PROBE = r"""
import sandbox
try:
    sandbox.run_program("print('ran')\n")
    print("RAN WITHOUT ISOLATION")
except sandbox.SandboxUnavailable as e:
    print("UNAVAILABLE:", e)
outcome = sandbox.run_program("print('ran')\n", allow_network=True)
print("ACCEPTED:", outcome.kind, sandbox.isolation(allow_network=True))
"""


def test_refuses_without_namespaces_unless_the_risk_is_accepted(isolation: dict[str, object]) -> None:
    if not isolation["root"]:
        pytest.skip("building an unprivileged user without user namespaces needs root")
    copy = Path(tempfile.mkdtemp(prefix="clusterft-sandbox-test-"))
    try:
        result = run_as_nobody(_PROBE, pythonpath=copy_sandbox(copy), home=Path("/"), deny_userns=True)
    finally:
        shutil.rmtree(copy)
    assert result.returncode == 0, result.stderr
    assert "UNAVAILABLE:" in result.stdout and "allow_network=True" in result.stdout, result.stdout
    assert "ACCEPTED: passed" in result.stdout and "'netns': False" in result.stdout, result.stdout


def test_the_pool_fits_the_cpus_this_process_may_use() -> None:
    """Pinned to one CPU (as SLURM binds a job to its allocation), run_many runs one sandbox at a time: no two
    programs' run intervals overlap. os.cpu_count() would have sized the pool by the host's cores."""
    program = "import time\nstart = time.time()\ntime.sleep(0.4)\nprint(start, time.time())\n"
    code = textwrap.dedent(f"""
        import json, os
        from jobs.eval.sandbox import run_many
        os.sched_setaffinity(0, {{sorted(os.sched_getaffinity(0))[0]}})
        outcomes = run_many([{program!r}] * 4, timeout_s=30)
        print(json.dumps([o.output.split() for o in outcomes]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    spans = sorted((float(a), float(b)) for a, b in json.loads(done.stdout.splitlines()[-1]))
    assert len(spans) == 4
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans
