"""Watching and stopping runs by their stable name: `launch status`, `launch logs`, `launch cancel`.

A run is found by name, experiment/name, or any of its stages' job ids, under the runs root. Its stages' states
come from SLURM (sacct, falling back to squeue) or, for local runs, from the job's own processes and the files it
left (launchers/submit/local_job.py). Restarts come from <run>/attempts.jsonl (written by rank 0 each time a stage
starts), the last metrics from <run>/last_metrics.json (written by the train stage at every log step).

A run whose own files cannot be read as launch wrote them (launch.json empty or cut short, a job id that is not a
number, a truncated result file) is damaged: the listing marks it DAMAGED and lists every other run; a command on
it stops with one line naming the file (jobs.spec.rundir.DamagedFile). Tested by tests/unit/test_damaged_runs.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.spec.errors import UserError, did_you_mean
from jobs.spec.rundir import EVAL_RESULTS, EXPORT_RECORD, LAUNCH_FILE, DamagedFile, RunDir
from jobs.spec.stages import STAGE_NAMES
from launchers.submit.local_job import (
    cancel_chain,
    cancelled_jobs,
    check_results,
    forked_ranks,
    job_processes,
    outcome,
    running_launcher,
)
from launchers.submit.processes import ProcessId
from launchers.text import table

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}
EXECUTORS = ("slurm", "local", "debug")
JOB_ID = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True)
class StageState:
    stage: str
    job_id: str
    state: str
    nodes: str = "-"
    elapsed: str = "-"
    restarts: int = 0


def all_runs(root: Path) -> list[RunDir]:
    return sorted((RunDir(p.parent) for p in root.glob(f"*/*/{LAUNCH_FILE}")), key=_age)


def _age(run: RunDir) -> float:
    try:
        return run.path.stat().st_mtime
    except OSError:  # removed meanwhile
        return 0.0


def find_run(root: Path, ref: str) -> RunDir:
    """A run by name, experiment/name, or the job id of one of its stages."""
    runs = all_runs(root)
    matches = [r for r in runs if ref in (r.name, f"{r.experiment}/{r.name}")]
    if not matches and ref.isdigit():
        matches = [r for r in runs if ref in _job_ids(r)]
    if len(matches) > 1:
        raise UserError(f"run {ref!r} is ambiguous: {', '.join(f'{r.experiment}/{r.name}' for r in matches)}")
    if not matches:
        names = [r.name for r in runs]
        close = did_you_mean(ref, names) if names else ""
        hint = close if close.startswith("did you mean") else (f"runs: {', '.join(names[-10:])}" if names
                                                               else "there are no runs yet")
        raise UserError(f"no run {ref!r} under {root}: {hint}")
    return matches[0]


def check_run(run: RunDir) -> None:
    """DamagedFile unless the files that make the run are whole: launch.json (as launch writes it), plan.json,
    recipe.yaml, attempts.jsonl, cancelled.json and its local jobs' result files and forked ranks."""
    record = launch_record(run)
    run.read_plan()
    run.check_recipe()
    run.attempts()
    if record["executor"] == "local":
        cancelled_jobs(run)
        for job_id in record["jobs"].values():
            check_results(run, job_id)
            forked_ranks(run, job_id)


def _job_ids(run: RunDir) -> list[str]:
    """The run's job ids; none for a damaged run (it cannot be told by job id)."""
    try:
        return list(launch_record(run)["jobs"].values())
    except DamagedFile:
        return []


def launch_record(run: RunDir) -> dict[str, Any]:
    """launch.json, with what commands read in it checked, else DamagedFile."""
    record = run.read_json(run.launch_file, required=True)
    problem = launch_record_problem(record)
    if problem:
        raise DamagedFile(run.launch_file, problem)
    return record


def launch_record_problem(record: dict[str, Any]) -> str | None:
    """What in a launch record is not as launch writes it (StartRequest.launch_record, the runners), or None."""
    stages, jobs, argv, resolved = (record.get(key) for key in ("stages", "jobs", "argv", "resolved"))
    if record.get("executor") not in EXECUTORS:
        return f"has no executor of {', '.join(EXECUTORS)} (\"executor\": {_shown(record.get('executor'))})"
    if not isinstance(stages, list) or not stages or any(stage not in STAGE_NAMES for stage in stages):
        return f"has no list of stages (\"stages\": {_shown(stages)})"
    if not isinstance(jobs, dict) or any(stage not in STAGE_NAMES for stage in jobs):
        return f"has no job of each stage (\"jobs\": {_shown(jobs)})"
    for stage, job_id in jobs.items():
        if not (isinstance(job_id, str) and JOB_ID.fullmatch(job_id)):
            return f"has a job id that is not a number ({stage}: {_shown(job_id)})"
    if argv is not None and not (isinstance(argv, list) and all(isinstance(arg, str) for arg in argv)):
        return f"has no command line (\"argv\": {_shown(argv)})"
    if resolved is not None and not (isinstance(resolved, dict) and isinstance(resolved.get("slurm"), dict)
                                     and isinstance(resolved.get("container"), dict)):
        return f"has no sbatch options and container (\"resolved\": {_shown(resolved)})"
    tags = record.get("local_jobs", {})
    if not (isinstance(tags, dict) and all(isinstance(tag, str) for tag in tags.values())):
        return f"has no process tag of each local job (\"local_jobs\": {_shown(tags)})"
    if "launcher" in record and ProcessId.from_record(record["launcher"]) is None:
        return f"has no pid and start time of its launcher (\"launcher\": {_shown(record['launcher'])})"
    return None


def _shown(value: Any) -> str:
    """A value found in a file, short and on one line."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def stage_states(run: RunDir) -> list[StageState]:
    record = launch_record(run)
    submitted: dict[str, str] = record.get("jobs", {})
    # in chain order: the launch's stages and any run again later (launch export, launch eval: their newest job)
    jobs = {stage: submitted[stage] for stage in STAGE_NAMES if stage in submitted}
    attempts = run.attempts()
    restarts = {stage: max(0, sum(a["stage"] == stage and str(a["job_id"]) == job for a in attempts) - 1)
                for stage, job in jobs.items()}
    executor = record.get("executor")
    if executor == "slurm":
        found = slurm_states(list(jobs.values()))
    else:
        found = {job_id: local_state(run, record, job_id) if executor == "local" else {"state": "IN-PROCESS"}
                 for job_id in jobs.values()}
    states = []
    for stage, job_id in jobs.items():
        info = found.get(job_id)
        info = info or {"state": "UNKNOWN"}
        states.append(StageState(stage, job_id, info["state"], info.get("nodes", "-"), info.get("elapsed", "-"),
                                 restarts.get(stage, 0)))
    return states


def slurm_states(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """job id → state, nodes, elapsed, from sacct (accounting), else squeue (only jobs still queued/running)."""
    if not job_ids:
        return {}
    fields = "JobIDRaw,State,NodeList,Elapsed"
    out = _run(["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", fields])
    states: dict[str, dict[str, str]] = {}
    for line in (out or "").splitlines():
        job_id, state, nodes, elapsed = (line.split("|") + ["", "", "", ""])[:4]
        states[job_id] = {"state": state.split()[0] if state else "UNKNOWN", "nodes": nodes or "-",
                          "elapsed": elapsed or "-"}
    missing = [j for j in job_ids if j not in states]
    if missing:
        queued = _run(["squeue", "-h", "-j", ",".join(missing), "-o", "%i|%T|%N|%M"]) or ""
        for line in queued.splitlines():
            job_id, state, nodes, elapsed = (line.split("|") + ["", "", "", ""])[:4]
            states[job_id] = {"state": state, "nodes": nodes or "-", "elapsed": elapsed or "-"}
    return states


def _run(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def local_state(run: RunDir, record: dict[str, Any], job_id: str) -> dict[str, str]:
    """A local job: RUNNING while one of its own processes runs, then how it ended; elapsed from its rank 0's start
    (attempts.jsonl) to now, or to its last output when it ended."""
    running = bool(job_processes(run, record, job_id))
    state = "RUNNING" if running else outcome(run, job_id).state
    started = [a["started"] for a in run.attempts() if str(a.get("job_id")) == job_id and "started" in a]
    elapsed = "-"
    if started:
        outputs = [p.stat().st_mtime for p in run.submitit.glob(f"{job_id}_0_*")]
        end = time.time() if running or not outputs else max(outputs)
        elapsed = _duration(end - float(started[-1]))
    return {"state": state, "nodes": "local", "elapsed": elapsed}


def _duration(seconds: float) -> str:
    """As SLURM's sacct writes Elapsed: [D-]HH:MM:SS."""
    minutes, secs = divmod(max(0, int(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}" if days else f"{hours:02d}:{minutes:02d}:{secs:02d}"


def last_metrics(run: RunDir) -> dict[str, Any]:
    return run.read_json(run.last_metrics_file)


def describe(run: RunDir) -> str:
    """The status table of one run, as `launch status RUN` prints it."""
    record = launch_record(run)
    lines = [f"run {run.experiment}/{run.name}  ({record.get('executor', '?')}, created {record.get('created', '?')})"]
    rows = [("STAGE", "JOB", "STATE", "NODES", "ELAPSED", "RESTARTS")]
    limit = record.get("max_requeues")
    for s in stage_states(run):
        state = s.state
        if state == "TIMEOUT" and limit is not None and s.restarts >= limit:
            state = f"TIMEOUT (requeued {s.restarts}×, limit {limit})"
        if s.stage == "train" and s.state == "RUNNING" and last_metrics(run).get("step") is not None:
            progress = last_metrics(run)
            state = f"RUNNING (step {progress['step']}/{progress.get('max_steps', '?')})"
        rows.append((s.stage, s.job_id, state, s.nodes, s.elapsed, str(s.restarts)))
    lines += table(rows)
    metrics = last_metrics(run)
    if metrics:
        lines.append(f"last metrics (step {metrics.get('step')}/{metrics.get('max_steps')}): "
                     f"{_numbers(metrics.get('metrics'))}")
    lines += outputs(run)
    return "\n".join(lines)


def outputs(run: RunDir) -> list[str]:
    """The newest export version and evaluation of a run, one line each (nothing when there is none)."""

    lines = []
    exports = run.versions()
    if exports:
        count, newest = len(exports), exports[-1]
        record = run.read_json(newest / EXPORT_RECORD, required=True)
        parts = [f"{name} {record[name]['bytes'] / 1e6:.1f} MB" for name in ("model", "adapter", "gguf")
                 if isinstance(record.get(name), dict) and isinstance(record[name].get("bytes"), int | float)]
        lines.append(f"export {newest.name} ({count} in all, from {record.get('source')}): {', '.join(parts)}  "
                     f"{newest}")
    results = sorted(run.evals.glob(f"*/{EVAL_RESULTS}"), key=lambda p: p.stat().st_mtime)
    if results:
        record = run.read_json(results[-1], required=True)
        lines.append(f"eval {results[-1].parent.name}: {_numbers(record.get('metrics'))}")
    return lines


def _numbers(metrics: Any) -> str:
    """name=value pairs of a metrics object, numbers to 4 digits."""
    items = sorted(metrics.items()) if isinstance(metrics, dict) else []
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items)


def summary_line(run: RunDir) -> tuple[str, ...]:
    """One row per run: the first stage that has not completed, COMPLETED, NOT STARTED, or DAMAGED and why."""
    try:
        check_run(run)
        executor = launch_record(run)["executor"]
        states = stage_states(run)
    except DamagedFile as err:
        where = err.path.relative_to(run.path) if err.path.is_relative_to(run.path) else err.path
        return f"{run.experiment}/{run.name}", "?", f"DAMAGED: {where} {err.problem}"
    current = next((s for s in states if s.state != "COMPLETED"), None)
    where = f"{current.stage}: {current.state}" if current else \
        f"COMPLETED ({len(states)} stages)" if states else "NOT STARTED"
    return f"{run.experiment}/{run.name}", executor, where


def log_path(run: RunDir, stage: str, rank: int, stream: str) -> Path:
    jobs = launch_record(run).get("jobs", {})
    if stage not in jobs:
        raise UserError(f"run {run.name} has no {stage} stage (stages: {', '.join(jobs) or 'none submitted'})")
    return run.submitit / f"{jobs[stage]}_{rank}_log.{stream}"


def show_log(run: RunDir, stage: str, rank: int, stream: str, follow: bool) -> int:
    path = _when_submitted(run, stage, rank, stream) if follow else log_path(run, stage, rank, stream)
    offset = 0
    while True:
        if path.exists():
            with path.open("r", encoding="utf-8", errors="replace") as handle:
                handle.seek(offset)
                sys.stdout.write(handle.read())
                offset = handle.tell()
            sys.stdout.flush()
        elif not follow:
            raise UserError(f"no {stream} log for rank {rank} of the {stage} stage yet ({path})")
        if not follow or _stage_finished(run, stage):
            return 0
        time.sleep(1.0)


def _when_submitted(run: RunDir, stage: str, rank: int, stream: str) -> Path:
    """The log path once `stage` is submitted: a local chain submits each stage when the one before it ends, and
    `launch logs RUN --stage train -f` during prepare waits for it (a note on stderr says so)."""
    waiting = False
    while True:
        record = launch_record(run)
        if stage in record.get("jobs", {}) or stage not in record.get("stages", []):
            return log_path(run, stage, rank, stream)  # its log, or the usual error naming the stages
        if record["executor"] != "local" or running_launcher(record) is None:
            states = ", ".join(f"{s.stage} {s.state}" for s in stage_states(run)) or "nothing submitted"
            raise UserError(f"the {stage} stage of {run.name} never started: its chain stopped before it ({states})")
        if not waiting:
            print(f"[logs] waiting for the {stage} stage of {run.name} to start...", file=sys.stderr, flush=True)
            waiting = True
        time.sleep(1.0)


def _stage_finished(run: RunDir, stage: str) -> bool:
    state = next((s.state for s in stage_states(run) if s.stage == stage), "UNKNOWN")
    return state in TERMINAL


def cancel(run: RunDir) -> list[str]:
    """Cancel every stage that has not finished, and (local runs) the rest of the chain; returns what was
    cancelled."""
    record = launch_record(run)
    pending = [s for s in stage_states(run) if s.state not in TERMINAL]
    cancelled = [f"{s.stage} ({s.job_id})" for s in pending]
    if record["executor"] == "local":
        launcher = cancel_chain(run, record, [s.job_id for s in pending])
        if launcher is not None:
            cancelled.append(f"the rest of its chain (launch, pid {launcher.pid})")
    elif pending:
        subprocess.run(["scancel", *[s.job_id for s in pending]], capture_output=True, timeout=60, check=False)
    return cancelled
