"""A local job after the fact, and stopping one: what `launch status`, `launch cancel` and the launcher share.

A local job's id is its controller's pid (submitit's). Its processes carry a tag of their own in their environment
($CLUSTERFT_LOCAL_JOB, set on the controller by launchers/submit/local_controller.py), recorded in launch.json
("local_jobs": job id → tag), or were forked for it by a fork server (<job>_forked.json): the job is running while
one of them runs, whatever became of its pid, and stopping it signals those processes only. The launcher records
itself too ("launcher": pid and start time), so `launch cancel` can stop the chain between two stages. A job that
ended is COMPLETED when every rank wrote a success result, CANCELLED when <run>/cancelled.json names it, else FAILED
with the reason: a rank killed by a signal, the last exception line a rank wrote, or an exit code. Tested by
tests/unit/test_damaged_runs.py, tests/unit/test_process_identity.py and tests/integration/test_local_cancel.py.
"""

from __future__ import annotations

import pickle
import re
import signal
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.spec.rundir import DamagedFile, RunDir
from launchers.submit.processes import ProcessId, carrying

TAG_ENV = "CLUSTERFT_LOCAL_JOB"
STOP_GRACE_S = 10.0  # for the ranks to end their MLflow runs (jobs/track/tracker.py: KILLED_FLUSH_S) before SIGKILL
ERROR_LINE = re.compile(r"(?:\[rank(\d+)\]: )?([A-Za-z_.]*(?:Error|Exception|Interrupt)\b.*)$")


@dataclass(frozen=True)
class Outcome:
    state: str  # COMPLETED, FAILED or CANCELLED
    reason: str = ""  # why it FAILED, e.g. "killed by SIGKILL (rank 1)"


def new_tag() -> str:
    return uuid.uuid4().hex


def exit_codes_file(folder: Path, job_id: str) -> Path:
    """The ranks' exit codes, written by the controller when they have all ended (negative: killed by a signal)."""
    return folder / f"{job_id}_exit_codes.json"


def forked_file(folder: Path, job_id: str) -> Path:
    """The ranks a fork server forked for the job (launchers/submit/forked_task.py): not under its controller."""
    return folder / f"{job_id}_forked.json"


def job_processes(run: RunDir, record: dict[str, Any], job_id: str) -> list[ProcessId]:
    """The processes of a job of this run still running: those carrying its tag (none for a job recorded without
    one), and the ranks forked for it, with their descendants."""
    tag = record.get("local_jobs", {}).get(job_id)
    if not tag:
        return []
    return carrying(TAG_ENV, tag, also=[process.pid for process in forked_ranks(run, job_id) if process.alive()])


def forked_ranks(run: RunDir, job_id: str) -> list[ProcessId]:
    path = forked_file(run.submitit, job_id)
    ranks = run.read_json(path).get("ranks", [])
    found = [ProcessId.from_record(rank) for rank in ranks] if isinstance(ranks, list) else [None]
    if None in found:
        raise DamagedFile(path, 'has no list of processes ("ranks": [{"pid": N, "start": T}])')
    return [process for process in found if process is not None]


def running_launcher(record: dict[str, Any]) -> ProcessId | None:
    """The process that launched (or resumed) the run's chain, if it is still running."""
    launcher = ProcessId.from_record(record.get("launcher"))
    return launcher if launcher is not None and launcher.alive() else None


def outcome(run: RunDir, job_id: str, controller_exit: int | None = None) -> Outcome:
    """How a local job that no longer runs ended (`controller_exit`: its controller's exit status, where known)."""
    folder = run.submitit
    ranks = max(1, len(list(folder.glob(f"{job_id}_*_log.out"))))
    results = [_result_kind(folder / f"{job_id}_{rank}_result.pkl") for rank in range(ranks)]
    if all(kind == "success" for kind in results):
        return Outcome("COMPLETED")
    if job_id in cancelled_jobs(run):
        return Outcome("CANCELLED")
    return Outcome("FAILED", _failure_reason(run, job_id, controller_exit))


def _failure_reason(run: RunDir, job_id: str, controller_exit: int | None) -> str:
    """The first rank a signal killed, else the controller, else the last exception line a rank wrote, else an
    exit code."""
    codes = run.read_json(exit_codes_file(run.submitit, job_id)).get("ranks", [])
    numbered = [(rank, code) for rank, code in enumerate(codes) if type(code) is int]
    killed = [(rank, code) for rank, code in numbered if code < 0]
    if killed:
        rank, code = killed[0]
        return f"killed by {_signal_name(-code)} (rank {rank})"
    if not codes and controller_exit is not None and controller_exit < 0:
        return f"its controller (pid {job_id}) was killed by {_signal_name(-controller_exit)}"
    error = _last_error(run.submitit, job_id)
    if error:
        return error
    exited = [(rank, code) for rank, code in numbered if code > 0]
    if exited:
        return f"rank {exited[0][0]} exited with code {exited[0][1]}"
    return f"ended without a result (job {job_id})"


def _last_error(log_dir: Path, job_id: str) -> str | None:
    """The last exception line any rank of a job wrote, e.g. 'rank 1: ValueError: ...'."""
    found: list[tuple[float, str]] = []
    for log in log_dir.glob(f"{job_id}_*_log.err"):
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        for line in reversed(lines):
            match = ERROR_LINE.match(line.strip())
            if match:
                rank = match.group(1) or log.name.split("_")[1]
                found.append((log.stat().st_mtime, f"rank {rank}: {match.group(2)}"))
                break
    return max(found)[1] if found else None


def check_results(run: RunDir, job_id: str) -> None:
    """DamagedFile unless every result file the job's ranks wrote is whole."""
    for path in run.submitit.glob(f"{job_id}_*_result.pkl"):
        _result_kind(path)


def _result_kind(path: Path) -> str | None:
    """'success' or 'error', from submitit's result file of one rank; None when the rank wrote none."""
    if not path.exists():
        return None
    try:
        with path.open("rb") as handle:
            kind = pickle.load(handle)[0]
    except Exception:  # noqa: BLE001 - cut short, or not a pickle at all: unpickling fails in many ways
        raise DamagedFile(path, "is not a whole submitit result (truncated?)") from None
    if kind not in ("success", "error"):
        raise DamagedFile(path, "is not a submitit result")
    return str(kind)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def cancelled_jobs(run: RunDir) -> set[str]:
    jobs = run.read_json(run.cancelled_file).get("jobs", [])
    if not (isinstance(jobs, list) and all(isinstance(job_id, str) for job_id in jobs)):
        raise DamagedFile(run.cancelled_file, 'has no list of job ids ("jobs")')
    return set(jobs)


def record_cancelled(run: RunDir, job_ids: Iterable[str]) -> None:
    """Note jobs as cancelled, before they are stopped: whoever sees them end knows why."""
    run.write_json(run.cancelled_file, {"jobs": sorted(cancelled_jobs(run) | set(job_ids))})


def stop_job(run: RunDir, record: dict[str, Any], job_id: str) -> bool:
    """Stop every process of a local job: SIGTERM to its controller, which stops the ranks with SIGINT (their stages
    end their MLflow runs KILLED), then SIGKILL to whatever is left after STOP_GRACE_S, including a descendant that its
    parent's end orphaned. False when none was running."""
    known = set(job_processes(run, record, job_id))
    if not known:
        return False

    def left() -> list[ProcessId]:
        known.update(job_processes(run, record, job_id))
        return [process for process in known if process.alive()]

    controller = [process for process in known if process.pid == int(job_id)]
    for process in controller:
        process.send(signal.SIGTERM)
    deadline = time.monotonic() + (STOP_GRACE_S if controller else 0)
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    for _ in range(50):  # a process may fork while it is killed: until none is left
        remaining = left()
        if not remaining:
            break
        for process in remaining:
            process.send(signal.SIGKILL)
        time.sleep(0.1)
    return True


def cancel_chain(run: RunDir, record: dict[str, Any], running: Iterable[str]) -> ProcessId | None:
    """Cancel a local run: its `running` jobs noted cancelled, its launcher (which would start the next stage)
    asked to stop the chain with SIGTERM, then whatever of those jobs is left stopped here. Returns the launcher if
    it was still running."""
    jobs = list(running)
    launcher = running_launcher(record)
    if not jobs and launcher is None:
        return None
    record_cancelled(run, jobs)
    if launcher is not None and launcher.send(signal.SIGTERM):
        deadline = time.monotonic() + STOP_GRACE_S + 10
        while launcher.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
    for job_id in jobs:
        stop_job(run, record, job_id)
    return launcher
