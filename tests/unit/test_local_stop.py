"""A stop signal that lands while the local chain submits a stage, or between two stages, stops the chain there:
the job just submitted is stopped and noted cancelled, no later stage is submitted, one line says how to continue.

    .venv/bin/python -m pytest tests/unit/test_local_stop.py -q

No process is started: the executor is a stand-in that signals this process at the chosen moment (the real chain
is tests/integration/test_local_cancel.py).
"""

from __future__ import annotations

import os
import pickle
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from jobs.spec.rundir import RunDir
from launchers.cli.main import container_of, run_parser, slurm_options
from launchers.recipe.load import resolve
from launchers.recipe.plan import make_plan
from launchers.submit import local
from launchers.submit.local_job import cancelled_jobs
from launchers.submit.request import StartRequest


class StandInJob:
    """A job that never ends by itself, unless it `completes` (then with a success result, as submitit writes it)."""

    def __init__(self, folder: Path, job_id: int, completes: bool, signal_when_done: int | None) -> None:
        self.job_id, self.completes, self.signal_when_done = job_id, completes, signal_when_done
        self.paths = SimpleNamespace(stdout=folder / f"{job_id}_%t_log.out")
        self.controller_exit = None
        if completes:
            (folder / f"{job_id}_0_log.out").write_text("done\n")
            with (folder / f"{job_id}_0_result.pkl").open("wb") as handle:
                pickle.dump(("success", None), handle)

    def done(self) -> bool:
        if self.completes and self.signal_when_done:
            os.kill(os.getpid(), self.signal_when_done)  # as the stage ends
        return self.completes


class StandInExecutor:
    def __init__(self, submitted: list[str], folder: Path, signal_at_submit: int | None, **job: Any) -> None:
        self.submitted, self.folder, self.signal_at_submit, self.job = submitted, folder, signal_at_submit, job

    def submit(self, task: Any) -> StandInJob:
        if self.signal_at_submit:
            os.kill(os.getpid(), self.signal_at_submit)  # half-way through the submission
        self.submitted.append(task.name)
        return StandInJob(self.folder, 1000 + len(self.submitted), **self.job)


def chain(tmp_path: Path) -> tuple[StartRequest, dict[str, Any]]:
    resolved = resolve("lora", "tiny-starcoder", ["resources.nodes=1", "resources.tasks_per_node=1"])
    run = RunDir.new(tmp_path / "runs", "tiny-starcoder", "r1")
    run.create()
    args = run_parser().parse_intermixed_args(["lora", "tiny-starcoder", "--local"])
    request = StartRequest(run, resolved.recipe, make_plan(resolved), "local", ("train", "export"),
                           slurm_options(args, resolved.recipe), container_of(args), 3)
    return request, request.launch_record(["lora", "tiny-starcoder", "--local"])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_during_a_submission_stops_the_job_submitted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    signum: int) -> None:
    request, record = chain(tmp_path)
    submitted: list[str] = []
    monkeypatch.setattr(local, "local_executor", lambda folder, *_: StandInExecutor(
        submitted, folder, signum, completes=False, signal_when_done=None))
    handlers = {s: signal.getsignal(s) for s in local.STOP_SIGNALS}

    assert local.run_local_chain(request, request.tasks(), record) == 128 + signum
    assert submitted == ["train"]
    assert cancelled_jobs(request.run) == {"1001"}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cancelled" in err and "during the train stage" in err, err
    assert "launch resume r1" in err
    assert {s: signal.getsignal(s) for s in local.STOP_SIGNALS} == handlers  # given back


def test_ctrl_c_between_two_stages_starts_no_later_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    request, record = chain(tmp_path)
    submitted: list[str] = []
    monkeypatch.setattr(local, "local_executor", lambda folder, *_: StandInExecutor(
        submitted, folder, None, completes=True, signal_when_done=signal.SIGINT))

    assert local.run_local_chain(request, request.tasks(), record) == 130
    assert submitted == ["train"]
    assert cancelled_jobs(request.run) == set()  # train completed
    err = capsys.readouterr().err
    assert "cancelled (Ctrl-C) before the export stage" in err and "launch resume r1" in err, err
