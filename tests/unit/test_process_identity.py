"""A local job's processes are known by their tag and start time, never by a pid alone: a launch record whose pid now
belongs to a stranger shows no RUNNING stage, and `launch cancel` leaves the stranger alone; the job's own processes
(and a descendant that cleared its environment) are found and stopped.

    .venv/bin/python -m pytest tests/unit/test_process_identity.py -q

No training: `sleep` stands in for the processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from launchers.submit import local_job
from launchers.submit.local_job import TAG_ENV
from launchers.submit.processes import ProcessId, carrying
from tests.unit.launch_harness import CliResult
from tests.unit.test_damaged_runs import make_run

Launch = Callable[..., CliResult]


@pytest.fixture
def started() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start processes; each is killed (by its pid, if still ours) at the end of the test."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(argv, env={**os.environ, **(env or {})}, start_new_session=True)
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def running_job(tmp_path: Path, pid: int, record: dict) -> None:
    """Run `hurt` as if its train job (id `pid`) had not ended: no result, `record` merged into launch.json."""
    run = make_run(tmp_path, "r1", 100)
    (run.submitit / "101_0_result.pkl").unlink()
    launch_record = json.loads(run.launch_file.read_text())
    launch_record["jobs"]["train"] = str(pid)
    launch_record.update(record)
    run.launch_file.write_text(json.dumps(launch_record))


@pytest.mark.parametrize("record", [
    pytest.param({}, id="no tag recorded"),
    pytest.param({"local_jobs": {}}, id="no tag of this job"),
    pytest.param("tag", id="a tag the stranger does not carry"),
])
def test_a_pid_that_a_stranger_now_holds_is_not_running_and_is_not_signalled(
        launch: Launch, tmp_path: Path, started: Callable[..., subprocess.Popen[bytes]], record: object) -> None:
    stranger = started("sleep", "60")
    if record == "tag":
        record = {"local_jobs": {str(stranger.pid): "0123456789abcdef"}}
    assert isinstance(record, dict)
    running_job(tmp_path, stranger.pid, {**record, "launcher": {"pid": stranger.pid, "start": 1}})

    status = launch("status", "r1")
    assert status.code == 0, status.err
    train = next(line for line in status.out.splitlines() if line.startswith("train"))
    assert "RUNNING" not in train and "FAILED" in train, status.out
    cancelled = launch("cancel", "r1")
    assert cancelled.code == 0 and "nothing to cancel" in cancelled.out, cancelled
    time.sleep(0.3)
    assert stranger.poll() is None, "launch cancel signalled a process that is not the run's"


def test_the_jobs_own_processes_are_running_then_cancelled(launch: Launch, tmp_path: Path,
                                                           started: Callable[..., subprocess.Popen[bytes]],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_job, "STOP_GRACE_S", 1.0)  # the orphaned child gets no SIGTERM: SIGKILL after this
    tag = "fedcba9876543210"
    # the controller stand-in, with a child that cleared its environment (found as a descendant)
    controller = started("sh", "-c", "env -i sleep 61 & wait", env={TAG_ENV: tag})
    deadline = time.monotonic() + 10
    while len(carrying(TAG_ENV, tag)) < 2:
        assert time.monotonic() < deadline, "the child did not start"
        time.sleep(0.05)
    members = carrying(TAG_ENV, tag)
    running_job(tmp_path, controller.pid, {"local_jobs": {str(controller.pid): tag}})

    assert "RUNNING" in launch("status", "r1").out
    assert launch("status").out.splitlines()[1].endswith("train: RUNNING")
    cancelled = launch("cancel", "r1")
    assert cancelled.code == 0 and f"cancelled train ({controller.pid})" in cancelled.out, cancelled
    assert controller.wait(timeout=10) is not None
    assert not any(member.alive() for member in members), "a process of the job was left running"
    train = next(line for line in launch("status", "r1").out.splitlines() if line.startswith("train"))
    assert "CANCELLED" in train, train


def test_a_process_is_its_pid_and_its_start_time(started: Callable[..., subprocess.Popen[bytes]]) -> None:
    me = ProcessId.current()
    assert me.alive() and ProcessId.of(me.pid) == me
    assert not ProcessId(me.pid, me.start + 1).alive()
    ended = started("true")
    ended.wait()
    assert ProcessId.of(ended.pid) is None
    sleeper = started("sleep", "60")
    impostor = ProcessId(sleeper.pid, ProcessId.of(sleeper.pid).start - 1)  # type: ignore[union-attr]
    assert not impostor.send(15) and sleeper.poll() is None
    assert ProcessId.from_record({"pid": 1, "start": "2"}) is None and ProcessId.from_record(None) is None
