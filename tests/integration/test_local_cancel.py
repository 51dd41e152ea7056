"""Stopping a local chain for real (tiny-starcoder LoRA on CPU, a train stage that would run for hours):

- Ctrl-C of the launch (SIGINT to its process group, as a terminal sends it), while a stage trains or starts up:
  one line with the `launch resume` hint, exit 130, no traceback; every process of the stage ends, no later stage
  starts, and `launch status` says CANCELLED.
- `launch cancel` from another process: the same, and the launch ends too (143, SIGTERM).
- kill -9 of a rank: the launch names it ("killed by SIGKILL (rank N)"), status FAILED, no later stage starts.

    .venv/bin/python -m pytest tests/integration/test_local_cancel.py -q
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import launch, launch_env

ENDLESS = "training.max_steps=100000"  # the train stage runs until it is stopped
WAIT_S = 100  # for a stage to start on a busy machine; each test stays under 2 minutes


class Launch:
    """`launch lora tiny-starcoder --local ...` started in a process group of its own, as a shell starts a job."""

    def __init__(self, tmp_path: Path, name: str, *args: str) -> None:
        self.tmp_path, self.name = tmp_path, name
        self.run = tmp_path / "runs" / "tiny-starcoder" / name
        self.out, self.err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "launchers.cli.main", "lora", "tiny-starcoder", "--local", "--name", name,
                 ENDLESS, *args], cwd=tmp_path, env=launch_env(), stdout=out, stderr=err, start_new_session=True)

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition():
            assert self.process.poll() is None, f"the launch ended before {what}:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {what} in {WAIT_S} s:\n{self.output()}"
            time.sleep(0.1)

    def jobs(self) -> dict[str, str]:
        try:
            return dict(json.loads((self.run / "launch.json").read_text())["jobs"])
        except (OSError, ValueError):
            return {}

    def training(self) -> bool:
        return (self.run / "last_metrics.json").exists()

    def job_processes(self, stage: str) -> list[psutil.Process]:
        """The stage's controller and every process under it, and the rank a fork server forked for it (one-rank
        chains: launchers/submit/forked_task.py) with its children."""
        job = self.jobs()[stage]
        controller = psutil.Process(int(job))
        forked = self.run / "submitit" / f"{job}_forked.json"
        ranks = [psutil.Process(rank["pid"]) for rank in json.loads(forked.read_text())["ranks"]] \
            if forked.exists() else []
        return [controller, *controller.children(recursive=True),
                *(p for rank in ranks for p in (rank, *rank.children(recursive=True)))]

    def ended(self) -> int:
        return self.process.wait(timeout=60)

    def stderr(self) -> str:
        return self.err.read_text()

    def output(self) -> str:
        return f"{self.out.read_text()[-3000:]}\n{self.stderr()[-3000:]}"

    def state(self, stage: str) -> str:
        status = launch("status", self.name, cwd=self.tmp_path)
        assert status.returncode == 0, status.stderr
        row = next(line for line in status.stdout.splitlines() if line.split()[:1] == [stage])
        return row.split()[2]


def assert_all_ended(processes: list[psutil.Process]) -> None:
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive, f"left running: {[p.pid for p in alive]}"


def assert_cancelled_line(started: Launch, cause: str) -> None:
    err = started.stderr()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [line for line in err.splitlines() if "cancelled" in line]
    assert len(lines) == 1, err
    assert f"cancelled ({cause})" in lines[0] and f"launch resume {started.name}" in lines[0], lines[0]


@pytest.fixture
def cleanup() -> Callable[[Launch], Launch]:
    """Whatever a failed test leaves running is killed (this test's processes only, by pid)."""
    started: list[Launch] = []
    yield started.append  # type: ignore[misc]
    for one in started:
        if one.process.poll() is None:
            os.killpg(one.process.pid, signal.SIGKILL)
            one.process.wait()


def test_ctrl_c_while_training_stops_the_stage_and_the_chain(tmp_path: Path, cleanup: Callable) -> None:
    started = Launch(tmp_path, "ctrl-c", "--stages", "train,export")
    cleanup(started)
    started.wait_until(started.training, "training step")
    processes = started.job_processes("train")
    assert len(processes) >= 2  # the controller and its rank

    os.killpg(started.process.pid, signal.SIGINT)
    assert started.ended() == 130, started.output()
    assert_cancelled_line(started, "Ctrl-C")
    assert_all_ended(processes)
    assert "export" not in started.jobs()
    assert started.state("train") == "CANCELLED"


def test_ctrl_c_while_the_stage_starts_up(tmp_path: Path, cleanup: Callable) -> None:
    started = Launch(tmp_path, "early", "--stages", "train,export")
    cleanup(started)
    started.wait_until(lambda: "train" in started.jobs(), "train job")
    processes = started.job_processes("train")

    os.killpg(started.process.pid, signal.SIGINT)
    assert started.ended() == 130, started.output()
    assert_cancelled_line(started, "Ctrl-C")
    assert_all_ended(processes)
    assert list(started.jobs()) == ["train"]
    assert started.state("train") == "CANCELLED"


def test_launch_cancel_from_another_process_stops_the_chain(tmp_path: Path, cleanup: Callable) -> None:
    started = Launch(tmp_path, "cancelled", "--stages", "train,export")
    cleanup(started)
    started.wait_until(started.training, "training step")
    processes = started.job_processes("train")
    status = launch("status", "cancelled", cwd=tmp_path).stdout  # where it is, and for how long
    row = next(line for line in status.splitlines() if line.startswith("train "))
    assert re.search(r"RUNNING \(step \d+/100000\)", row) and re.search(r"\d\d:\d\d:\d\d", row), status

    cancelled = launch("cancel", "cancelled", cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"cancelled train ({started.jobs()['train']})" in cancelled.stdout, cancelled.stdout
    assert started.ended() == 128 + signal.SIGTERM, started.output()
    assert_cancelled_line(started, "SIGTERM")
    assert_all_ended(processes)
    assert "export" not in started.jobs()
    assert started.state("train") == "CANCELLED"
    again = launch("cancel", "cancelled", cwd=tmp_path)
    assert again.returncode == 0 and "nothing to cancel" in again.stdout, again.stdout


def test_kill_9_of_a_rank_is_named_and_the_chain_stops(tmp_path: Path, cleanup: Callable) -> None:
    started = Launch(tmp_path, "killed", "--nproc", "2", "--stages", "train,export")
    cleanup(started)
    started.wait_until(started.training, "training step")
    controller, *below = started.job_processes("train")
    rank_1 = next(p for p in controller.children() if p.environ().get("SUBMITIT_LOCAL_GLOBALID") == "1")

    rank_1.send_signal(signal.SIGKILL)
    assert started.ended() == 1, started.output()
    err = started.stderr()
    assert "[launch] train failed: killed by SIGKILL (rank 1)" in err and "Traceback" not in err, err
    assert_all_ended([controller, *below])
    assert "export" not in started.jobs()
    assert started.state("train") == "FAILED"


def test_logs_follow_waits_for_a_stage_that_has_not_started(tmp_path: Path, cleanup: Callable) -> None:
    """`launch logs RUN --stage train -f` while prepare runs: it waits, then streams train, and ends with it."""
    started = Launch(tmp_path, "followed", "--stages", "prepare,train")
    cleanup(started)
    started.wait_until(lambda: "prepare" in started.jobs(), "prepare stage")
    follower = subprocess.Popen([sys.executable, "-m", "launchers.cli.main", "logs", "followed", "--stage", "train",
                                 "-f"], cwd=tmp_path, env=launch_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    started.wait_until(started.training, "training step")
    assert "train" in started.jobs() and follower.poll() is None
    assert launch("cancel", "followed", cwd=tmp_path).returncode == 0
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err
    assert "waiting for the train stage of followed to start" in err and "[train] rank 0/1" in out, (out, err)
