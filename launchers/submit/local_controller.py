"""How a local job's processes start: submitit's LocalExecutor and controller, changed in three ways.

- The controller starts in a session of its own: a Ctrl-C in the terminal reaches the launcher only, which then
  stops the job in order (launchers/submit/local.py), instead of every rank printing a traceback.
- The controller, and so every rank, carries the job's tag in its environment ($CLUSTERFT_LOCAL_JOB): `launch
  status` and `launch cancel` find exactly the job's processes (launchers/submit/local_job.py).
- SIGTERM or SIGINT to the controller stops the ranks with SIGINT (submitit's ranks ignore SIGTERM, so its own
  controller never stopped them), and the ranks' exit codes are written down, so a rank killed by a signal is named.
- Given a fork server ($CLUSTERFT_FORKSERVER), a one-rank job's rank is forked warm by it instead of started afresh
  (launchers/submit/forked_task.py), and recorded in <folder>/<job>_forked.json.

    python -m launchers.submit.local_controller FOLDER     the controller, as LocalStageExecutor starts it
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import JobPaths
from submitit.local.local import Controller, LocalJob

from jobs.spec.forkserver import SOCKET_ENV
from jobs.spec.rundir import write_atomic
from launchers.submit.forked_task import ForkedTask, ForkUnavailable
from launchers.submit.local_job import TAG_ENV, exit_codes_file, forked_file


class LocalStageExecutor(submitit.LocalExecutor):
    """submitit's LocalExecutor, whose jobs' controllers are StageControllers carrying `tag`."""

    def __init__(self, folder: Path, tag: str, fork_server: str | None = None) -> None:
        super().__init__(folder=folder)
        self.tag, self.fork_server = tag, fork_server

    def _submit_command(self, command: str) -> LocalStageJob:
        """As submitit's (the same environment for its controller), in a new session, with the tag."""
        ranks = self.parameters.get("tasks_per_node", 1)
        gpus = range(self.parameters.get("gpus_per_node", 0))
        env = {
            **os.environ, TAG_ENV: self.tag, "SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_COMMAND": command,
            "SUBMITIT_LOCAL_NTASKS": str(ranks), "SUBMITIT_LOCAL_NODEID": "0", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
            "SUBMITIT_LOCAL_TIMEOUT_S": str(int(60 * self.parameters.get("timeout_min", 2.0))),
            "SUBMITIT_LOCAL_SIGNAL_DELAY_S": str(int(self.parameters.get("signal_delay_s", 30))),
            "SUBMITIT_STDERR_TO_STDOUT": "", "SUBMITIT_LOCAL_WITH_SHELL": "",
            "CUDA_VISIBLE_DEVICES": ",".join(str(gpu) for gpu in gpus),
            **({SOCKET_ENV: self.fork_server} if self.fork_server else {}),
        }
        process = subprocess.Popen([sys.executable, "-m", __name__, str(self.folder)], env=env,
                                   start_new_session=True)
        return LocalStageJob(folder=self.folder, job_id=str(process.pid), process=process, tasks=list(range(ranks)))


class LocalStageJob(LocalJob[Any]):
    """submitit's LocalJob, and how its controller ended."""

    @property
    def controller_exit(self) -> int | None:
        """The controller's exit status (negative: killed by that signal); None while it runs."""
        return self._process.poll() if self._process is not None else None


class StageController(Controller):
    """submitit's controller: SIGTERM or SIGINT stops the ranks with SIGINT (and none starts after it), and the
    ranks' exit codes are written to <folder>/<job>_exit_codes.json when they have all ended."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.stopping = False
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)

    def _stop(self, *_: Any) -> None:
        self.stopping = True
        self._forward_signal(signal.SIGINT)

    def start_tasks(self) -> None:
        socket_path = os.environ.get(SOCKET_ENV)
        if socket_path and self.ntasks == 1:
            try:
                self._start_forked(socket_path)
            except ForkUnavailable as why:
                print(f"[launch] no warm start ({why}): starting the rank afresh", file=sys.stderr, flush=True)
                super().start_tasks()
        else:
            super().start_tasks()
        if self.stopping:  # asked to stop while they started
            self._forward_signal(signal.SIGINT)

    def _start_forked(self, socket_path: str) -> None:
        """The one rank, forked by the chain's fork server (launchers/submit/forked_task.py) and recorded."""
        self.folder.mkdir(exist_ok=True)
        paths = JobPaths(self.folder, self.pid, 0)
        self.stdouts = [paths.stdout.open("a")]
        self.stderrs = self.stdouts if self.stderr_to_stdout else [paths.stderr.open("a")]
        env = {key: value for key, value in os.environ.items() if key != SOCKET_ENV}
        env.update(SUBMITIT_LOCAL_LOCALID="0", SUBMITIT_LOCAL_GLOBALID="0", SUBMITIT_LOCAL_JOB_ID=self.pid)
        task = ForkedTask.start(socket_path, self.command, env, os.getcwd(), paths.stdout,
                                paths.stdout if self.stderr_to_stdout else paths.stderr)
        self.tasks.append(task)  # type: ignore[arg-type] - used through poll and send_signal, as a Popen is
        write_atomic(forked_file(self.folder, self.pid), json.dumps({"ranks": [task.process.as_record()]}) + "\n")

    def wait(self, freq: int = 24) -> Sequence[int | None]:
        codes = super().wait(freq)
        write_atomic(exit_codes_file(self.folder, self.pid), json.dumps({"ranks": list(codes)}) + "\n")
        return codes


if __name__ == "__main__":
    StageController(Path(sys.argv[1])).run()
