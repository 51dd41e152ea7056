"""Running the stage chain on this machine and following it: rank 0's output streamed to the terminal, the first
failure named by the exception line a rank wrote, Ctrl-C cancels (the run directory stays)."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

from launchers.submit.chain import stage_ranks
from launchers.submit.executors import submit_local
from jobs.spec.plan import Plan
from jobs.spec.schema import Recipe
from jobs.spec.rundir import RunDir

ERROR_LINE = re.compile(r"(?:\[rank(\d+)\]: )?([A-Za-z_.]*(?:Error|Exception|Interrupt)\b.*)$")


def run_local_chain(tasks: dict[str, Any], plan: Plan, recipe: Recipe, run: RunDir, record: dict[str, Any]) -> int:
    """Each stage as a local job (the train stage with one process per rank), in order; stop at a failure."""
    for stage, task in tasks.items():
        nodes, ranks = stage_ranks(recipe, plan, stage)  # one node here: --local sets resources.nodes=1
        job = submit_local(task, nodes * ranks, recipe, run.submitit)
        record["jobs"][stage] = str(job.job_id)
        run.write_json(run.launch_file, record)
        status = follow_local(job, run, stage)
        if status:
            return status
    print(f"[launch] finished: {run.path}")
    return 0


def run_debug_chain(tasks: dict[str, Any], run: RunDir, record: dict[str, Any]) -> int:
    """Every stage in this process, one after the other (submitit's DebugExecutor): errors keep their traceback,
    breakpoints work."""
    import submitit

    for stage, task in tasks.items():
        job = submitit.DebugExecutor(folder=run.submitit).submit(task)
        record["jobs"][stage] = str(job.job_id)
        run.write_json(run.launch_file, record)
        job.result()
    print(f"[launch] finished: {run.path}")
    return 0


def follow_local(job: Any, run: RunDir, stage: str) -> int:
    """Stream rank 0's output until the job ends. 0 when it succeeded, 1 when it failed, 130 on Ctrl-C."""
    stdout = Path(str(job.paths.stdout).replace("%t", "0"))
    offset = 0
    try:
        while True:
            finished = job.done()
            offset = _copy_new(stdout, offset)
            if finished:
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        job.cancel()
        print(f"\n[launch] cancelled during {stage}; the run directory stays: {run.path}", file=sys.stderr)
        return 130
    if job.state in ("FAILED", "CANCELLED") or job.exception() is not None:
        reason = last_error(run.submitit, str(job.job_id)) or job.state
        print(f"[launch] {stage} failed: {reason}\n[launch] logs: {run.submitit}", file=sys.stderr)
        return 1
    return 0


def _copy_new(path: Path, offset: int) -> int:
    if not path.exists():
        return offset
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        handle.seek(offset)
        chunk = handle.read()
        offset = handle.tell()
    if chunk:
        sys.stdout.write(chunk)
        sys.stdout.flush()
    return offset


def last_error(log_dir: Path, job_id: str = "*") -> str | None:
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
