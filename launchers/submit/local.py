"""The runners for this machine: the stage chain as local processes (submitit's LocalExecutor, one process per
rank, gloo on CPU) followed in the terminal, or every stage in this process (DebugExecutor, pdb works).

Following: rank 0's output is streamed (launchers.submit.progress: a live progress line on a terminal, submitit's
INFO lines left to the logs); a failure is named (a rank killed by a signal, the exception line a rank
wrote, an exit code). Ctrl-C (SIGINT), SIGTERM (what `launch cancel` sends this process) and SIGHUP only note that
the chain must stop: it stops between two steps, never half-way through a submission, so no job is left behind
unrecorded. Then the running job is stopped and noted cancelled, no later stage starts, the run directory stays,
and one line says how to continue; the exit code is 128 + the signal (130 for Ctrl-C). Tested by
tests/integration/test_local_training.py, tests/integration/test_local_cancel.py, tests/unit/test_local_stop.py and
the unit CLI tests.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from jobs.spec.imports import unused_modules
from jobs.spec.rundir import RunDir
from launchers.submit.chain import stage_ranks
from launchers.submit.forked_task import ForkServer
from launchers.submit.local_job import new_tag, outcome, record_cancelled, stop_job
from launchers.submit.processes import ProcessId
from launchers.submit.progress import ProgressView
from launchers.submit.request import StartRequest
from launchers.submit.stage import JOB_MODULES, Stage

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FOLLOW_EVERY_S = 0.2  # how often rank 0's log is read and the job looked at
COLD_ENV = "CLUSTERFT_COLD_START"  # "1": no fork server, every stage a fresh process (how they start on SLURM)


class StopRequests:
    """While the chain runs, a stop signal is only noted (`received`); a signal the caller ignored (nohup) stays
    ignored. The previous handlers come back on exit."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                self._previous[signum] = signal.signal(signum, self._note)
        return self

    def _note(self, signum: int, _frame: FrameType | None) -> None:
        self.received = self.received or signum

    def __exit__(self, *_: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def run_local_chain(request: StartRequest, tasks: dict[str, Stage], record: dict[str, Any]) -> int:
    """Each stage as a local job (the train stage with one process per rank), in order; stop at a failure or when
    asked to."""
    run, recipe = request.run, request.recipe
    ranks = {stage: math.prod(stage_ranks(recipe, request.plan, stage)) for stage in tasks}  # one node: --local
    with StopRequests() as stop, warm_starts(run, ranks, unused_modules(recipe)) as fork_server:
        record["launcher"] = ProcessId.current().as_record()
        run.write_json(run.launch_file, record)
        print(f"[launch] {recipe.name}: {', '.join(request.stages)} on {request.plan.world_size} local rank(s), "
              f"run {run.path}", flush=True)
        for stage, task in tasks.items():
            if stop.received:
                return stopped(run, f"before the {stage} stage", stop.received)
            tag = new_tag()
            executor = local_executor(run.submitit, tag, ranks[stage], recipe.resources.minutes, fork_server)
            job = executor.submit(task)
            record["jobs"][stage] = str(job.job_id)
            record.setdefault("local_jobs", {})[str(job.job_id)] = tag
            run.write_json(run.launch_file, record)
            status = follow_local(job, run, stage, record, stop)
            if status:
                return status
    print(finished_summary(run), flush=True)
    return 0


@contextlib.contextmanager
def warm_starts(run: RunDir, ranks: dict[str, int], leave_out: Sequence[str]) -> Iterator[str | None]:
    """A fork server's socket when every stage has one rank (each stage then starts warm: the stack is imported
    once, launchers/submit/forked_task.py; without the `leave_out` modules), else None (a process per rank, each
    importing what it needs)."""
    if any(count != 1 for count in ranks.values()) or os.environ.get(COLD_ENV) == "1":
        yield None
        return
    run.submitit.mkdir(parents=True, exist_ok=True)
    modules = ["submitit.core._submit", "launchers.submit.stage", *(JOB_MODULES[stage] for stage in ranks)]
    with ForkServer.started(modules, run.submitit / "forkserver.log", leave_out) as server:
        yield server.socket_path


def run_debug_chain(request: StartRequest, tasks: dict[str, Stage], record: dict[str, Any]) -> int:
    """Every stage in this process, one after the other (submitit's DebugExecutor): errors keep their traceback,
    breakpoints work."""
    import submitit

    run = request.run
    for stage, task in tasks.items():
        job = submitit.DebugExecutor(folder=run.submitit).submit(task)
        record["jobs"][stage] = str(job.job_id)
        run.write_json(run.launch_file, record)
        job.result()
    print(finished_summary(run), flush=True)
    return 0


def follow_local(job: Any, run: RunDir, stage: str, record: dict[str, Any], stop: StopRequests) -> int:
    """Stream rank 0's output until the job ends: 0 when it completed, 1 when it failed; when a stop signal came
    first, the job is stopped and noted cancelled: 128 + the signal."""
    stdout = Path(str(job.paths.stdout).replace("%t", "0"))
    view = ProgressView(sys.stdout)
    offset = 0
    while not job.done() and not stop.received:
        offset = _copy_new(stdout, offset, view)
        time.sleep(FOLLOW_EVERY_S)
    job_id = str(job.job_id)
    if stop.received and not job.done():
        record_cancelled(run, [job_id])
        stop_job(run, record, job_id)
        _copy_new(stdout, offset, view, rest=True)
        view.close()
        return stopped(run, f"during the {stage} stage", stop.received)
    _copy_new(stdout, offset, view, rest=True)
    view.close()
    ended = outcome(run, job_id, job.controller_exit)
    if ended.state == "COMPLETED":
        return 0  # a stop signal that came as it ended stops the chain before the next stage
    stop_job(run, record, job_id)  # its controller killed: ranks it left behind must not run on unwatched
    if ended.state == "CANCELLED":  # by `launch cancel`, which stops this process too (its signal may come next)
        return stopped(run, f"during the {stage} stage", stop.received or signal.SIGTERM)
    print(f"[launch] {stage} failed: {ended.reason}\n[launch] logs: {run.submitit}", file=sys.stderr)
    return 1


def finished_summary(run: RunDir) -> str:
    """The end of a chain that ran here: the numbers it ended with, where its outputs are, what to do next."""
    from launchers.runs import last_metrics, outputs

    lines = [f"[launch] finished: {run.path}"]
    metrics = last_metrics(run).get("metrics", {})
    shown = [f"{label} {metrics[key]:.4f}" for key, label in (("train/loss", "train loss"), ("eval/loss", "eval loss"))
             if isinstance(metrics.get(key), int | float)]
    if shown:
        lines.append(f"[launch] {', '.join(shown)}")
    lines += [f"[launch] {line}" for line in outputs(run)]
    lines.append(f"[launch] next: launch compare {run.name} OTHER-RUN  |  launch generate {run.name} --prompt "
                 f"'def fib(n):'  |  launch export {run.name}  |  launch mlflow-server")
    return "\n".join(lines)


def stopped(run: RunDir, when: str, signum: int) -> int:
    """The one line a stopped chain ends with; the exit code of a process that `signum` ended."""
    cause = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    print(f"[launch] cancelled ({cause}) {when}; the run directory stays: {run.path}; continue it with: "
          f"launch resume {run.name}", file=sys.stderr, flush=True)
    return 128 + signum


def _copy_new(path: Path, offset: int, view: ProgressView, rest: bool = False) -> int:
    """What `path` gained since `offset`, to `view`: whole lines (a multi-byte character is never split), and with
    `rest` (the job ended) a last line without its newline too; returns the new offset."""
    if not path.exists():
        return offset
    with path.open("rb") as handle:
        handle.seek(offset)
        chunk = handle.read()
    cut = len(chunk) if rest else chunk.rfind(b"\n") + 1
    if cut:
        view.feed(chunk[:cut].decode("utf-8", errors="replace"))
    return offset + cut


def local_gpu_count() -> int:
    """GPUs on this machine, without importing torch (nvidia-smi when present)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


def local_executor(folder: Path, tag: str, ranks: int, minutes: int, fork_server: str | None = None) -> Any:
    """One process per rank on this machine (gloo on CPU, or one local GPU per rank), tagged `tag`; forked by the
    `fork_server` listening there, if given."""
    from launchers.submit.local_controller import LocalStageExecutor

    executor = LocalStageExecutor(folder, tag, fork_server)
    executor.update_parameters(nodes=1, tasks_per_node=ranks, gpus_per_node=min(local_gpu_count(), ranks),
                               timeout_min=minutes)
    return executor
