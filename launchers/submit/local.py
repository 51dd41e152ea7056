"""The runners for this machine: the stage chain as local processes (submitit's LocalExecutor, one process per
rank, gloo on CPU) followed in the terminal, or every stage in this process (DebugExecutor, pdb works).

Following: rank 0's output is streamed, the first failure is named by the exception line a rank wrote, Ctrl-C
cancels (the run directory stays). Tested by tests/integration/test_local_training.py and the unit CLI tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jobs.spec.rundir import RunDir
from launchers.submit.chain import stage_ranks
from launchers.submit.request import StartRequest
from launchers.submit.stage import Stage

ERROR_LINE = re.compile(r"(?:\[rank(\d+)\]: )?([A-Za-z_.]*(?:Error|Exception|Interrupt)\b.*)$")


def run_local_chain(request: StartRequest, tasks: dict[str, Stage], record: dict[str, Any]) -> int:
    """Each stage as a local job (the train stage with one process per rank), in order; stop at a failure."""
    run, recipe = request.run, request.recipe
    print(f"[launch] {recipe.name}: {', '.join(request.stages)} on {request.plan.world_size} local rank(s), "
          f"run {run.path}", flush=True)
    for stage, task in tasks.items():
        nodes, ranks = stage_ranks(recipe, request.plan, stage)  # one node here: --local sets resources.nodes=1
        job = local_executor(run.submitit, nodes * ranks, recipe.resources.minutes).submit(task)
        record["jobs"][stage] = str(job.job_id)
        run.write_json(run.launch_file, record)
        status = follow_local(job, run, stage)
        if status:
            return status
    print(f"[launch] finished: {run.path}")
    return 0


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


def local_gpu_count() -> int:
    """GPUs on this machine, without importing torch (nvidia-smi when present)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


def local_executor(folder: Path, ranks: int, minutes: int) -> Any:
    """submitit's LocalExecutor: one process per rank on this machine (gloo on CPU, or one local GPU per rank)."""
    import submitit

    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(nodes=1, tasks_per_node=ranks, gpus_per_node=min(local_gpu_count(), ranks),
                               timeout_min=minutes)
    return executor
