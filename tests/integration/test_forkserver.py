"""The fork server for local single-rank chains, for real: a forked rank behaves as the fresh `python -u -m` process
it replaces (environment, directory, logs written at once, exit status, signals), and a stopped controller's rank
never runs unwatched. Whole chains through it: tests/integration/test_local_training.py and test_local_cancel.py.

    .venv/bin/python -m pytest tests/integration/test_forkserver.py -q
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.spec.forkserver import Lines, send
from launchers.submit.forked_task import ForkedTask, ForkServer, ForkUnavailable, connect

pytestmark = pytest.mark.integration
PROBE = "forked_probe"  # copied into each test's directory, the rank's: `python -m` finds it there
WAIT_S = 30


@pytest.fixture(autouse=True)
def probe(tmp_path: Path) -> None:
    shutil.copy(Path(__file__).with_name("forked_probe.py"), tmp_path)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ForkServer]:
    with ForkServer.started(["json"], tmp_path / "forkserver.log") as started:
        yield started


def start(server: ForkServer, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> ForkedTask:
    command = [sys.executable, "-u", "-m", PROBE, str(tmp_path / "probe.json"), *args]
    return ForkedTask.start(server.socket_path, command, env or {"PROBE_ONLY": "1"}, str(tmp_path),
                            tmp_path / "out.log", tmp_path / "err.log")


def ended(task: ForkedTask) -> int:
    deadline = time.monotonic() + WAIT_S
    while task.poll() is None:
        assert time.monotonic() < deadline, "the forked rank did not end"
        time.sleep(0.05)
    return task.poll()  # type: ignore[return-value]


def test_a_forked_rank_is_the_process_it_replaces(server: ForkServer, tmp_path: Path) -> None:
    task = start(server, tmp_path, "3", "2")
    deadline = time.monotonic() + WAIT_S
    log = tmp_path / "out.log"
    while not (log.exists() and "probe started" in log.read_text()):  # unbuffered: seen while it still runs
        assert task.poll() is None and time.monotonic() < deadline, "the first line never reached the log"
        time.sleep(0.05)
    assert ended(task) == 3
    seen = json.loads((tmp_path / "probe.json").read_text())
    assert seen["cwd"] == str(tmp_path) != os.getcwd() and seen["argv"][1:] == [str(tmp_path / "probe.json"), "3", "2"]
    assert seen["env"] == {"PROBE_ONLY": "1"}  # the request's environment only, none of the server's
    assert seen["stdin"] == "" and seen["wave_found"]
    assert (tmp_path / "err.log").read_text() == "probe stderr\n"
    assert log.read_text().splitlines()[-2:] == ["thread done", "atexit ran"]  # joined, then exit handlers
    assert task.process.pid != os.getpid() and not task.process.alive()


def test_a_module_left_out_stays_out_of_the_server_and_its_ranks(tmp_path: Path) -> None:
    """The launcher leaves out what the chain's recipe never uses (bitsandbytes for a LoRA): not even the server
    imports it, so its ranks find it absent too."""
    with ForkServer.started(["json"], tmp_path / "forkserver.log", leave_out=["wave"]) as server:
        assert ended(start(server, tmp_path, "0")) == 0
    assert json.loads((tmp_path / "probe.json").read_text())["wave_found"] is False


def test_signals_reach_the_forked_rank(server: ForkServer, tmp_path: Path) -> None:
    task = start(server, tmp_path, "0", "60")
    deadline = time.monotonic() + WAIT_S
    while not (tmp_path / "probe.json").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    task.send_signal(signal.SIGINT)  # as a controller stops its ranks: KeyboardInterrupt, then death by SIGINT
    assert ended(task) == -signal.SIGINT
    assert "KeyboardInterrupt" in (tmp_path / "err.log").read_text()
    task.send_signal(signal.SIGKILL)  # once ended, its pid is never signalled again


def test_a_rank_whose_controller_left_is_killed_not_left_running(server: ForkServer, tmp_path: Path) -> None:
    connection = connect(server.socket_path)
    send(connection, {"module": PROBE, "args": [str(tmp_path / "probe.json"), "0", "60"], "env": {},
                      "cwd": str(tmp_path), "stdout": str(tmp_path / "out.log"), "stderr": str(tmp_path / "err.log")})
    connection.close()  # stopped while the server was still importing: no one would watch the rank
    follow = start(server, tmp_path, "5")  # the server serves on
    assert ended(follow) == 5


def test_bad_requests_are_refused_and_the_server_serves_on(server: ForkServer, tmp_path: Path) -> None:
    connection = connect(server.socket_path)
    send(connection, {"module": PROBE})
    assert "needs module, args, env" in Lines(connection).next()["error"]  # type: ignore[index]
    connection.close()
    with pytest.raises(ForkUnavailable, match="not a python -u -m command"):
        ForkedTask.start(server.socket_path, [sys.executable, PROBE], {}, str(tmp_path), tmp_path / "o", tmp_path / "e")
    assert ended(start(server, tmp_path, "0")) == 0


def test_the_socket_is_private_and_goes_with_the_server(tmp_path: Path) -> None:
    with ForkServer.started(["json"], tmp_path / "forkserver.log") as server:
        assert os.stat(server.directory).st_mode & 0o777 == 0o700
        assert ended(start(server, tmp_path, "0")) == 0
    assert not os.path.exists(server.directory) and server.process.poll() == 0
