"""Watching and stopping runs by their stable name: `launch status`, `launch logs`, `launch cancel`.

A run is found by name, experiment/name, or any of its stages' job ids, under the runs root. Its stages' states
come from SLURM (sacct, falling back to squeue) or, for local runs, from submitit's result files and the process
table. Restarts come from <run>/attempts.jsonl (written by rank 0 each time a stage starts), the last metrics from
<run>/last_metrics.json (written by the train stage at every log step).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.spec.errors import UserError, did_you_mean
from jobs.spec.rundir import EXPORT_RECORD, LAUNCH_FILE, RunDir, pid_alive
from jobs.spec.stages import STAGE_NAMES
from launchers.text import table

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}


@dataclass(frozen=True)
class StageState:
    stage: str
    job_id: str
    state: str
    nodes: str = "-"
    elapsed: str = "-"
    restarts: int = 0


def all_runs(root: Path) -> list[RunDir]:
    return sorted((RunDir(p.parent) for p in root.glob(f"*/*/{LAUNCH_FILE}")), key=lambda r: r.path.stat().st_mtime)


def find_run(root: Path, ref: str) -> RunDir:
    """A run by name, experiment/name, or the job id of one of its stages."""
    runs = all_runs(root)
    matches = [r for r in runs if ref in (r.name, f"{r.experiment}/{r.name}")]
    if not matches and ref.isdigit():
        matches = [r for r in runs if ref in launch_record(r).get("jobs", {}).values()]
    if len(matches) > 1:
        raise UserError(f"run {ref!r} is ambiguous: {', '.join(f'{r.experiment}/{r.name}' for r in matches)}")
    if not matches:
        names = [r.name for r in runs]
        close = did_you_mean(ref, names) if names else ""
        hint = close if close.startswith("did you mean") else (f"runs: {', '.join(names[-10:])}" if names
                                                               else "there are no runs yet")
        raise UserError(f"no run {ref!r} under {root}: {hint}")
    return matches[0]


def launch_record(run: RunDir) -> dict[str, Any]:
    return run.read_json(run.launch_file)


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
        found = {job_id: local_state(run, job_id) if executor == "local" else {"state": "IN-PROCESS"}
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


def local_state(run: RunDir, job_id: str) -> dict[str, str]:
    """A local job (its id is the controller's pid): running while the pid lives, then submitit's result."""
    result = run.submitit / f"{job_id}_0_result.pkl"
    if result.exists():
        with result.open("rb") as handle:
            outcome = pickle.load(handle)[0]
        return {"state": "COMPLETED" if outcome == "success" else "FAILED", "nodes": "local"}
    if pid_alive(int(job_id)):
        return {"state": "RUNNING", "nodes": "local"}
    return {"state": "FAILED", "nodes": "local"}


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
        rows.append((s.stage, s.job_id, state, s.nodes, s.elapsed, str(s.restarts)))
    lines += table(rows)
    metrics = last_metrics(run)
    if metrics:
        shown = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in sorted(metrics.get("metrics", {}).items()))
        lines.append(f"last metrics (step {metrics.get('step')}/{metrics.get('max_steps')}): {shown}")
    lines += outputs(run)
    return "\n".join(lines)


def outputs(run: RunDir) -> list[str]:
    """The newest export version and evaluation of a run, one line each (nothing when there is none)."""

    lines = []
    exports = run.versions()
    if exports:
        count, newest = len(exports), exports[-1]
        record = json.loads((newest / EXPORT_RECORD).read_text(encoding="utf-8"))
        parts = [f"{name} {record[name]['bytes'] / 1e6:.1f} MB" for name in ("model", "adapter", "gguf")
                 if isinstance(record.get(name), dict)]
        lines.append(f"export {newest.name} ({count} in all, from {record.get('source')}): {', '.join(parts)}  "
                     f"{newest}")
    results = sorted((run.evals).glob("*/results.json"), key=lambda p: p.stat().st_mtime)
    if results:
        record = json.loads(results[-1].read_text(encoding="utf-8"))
        shown = "  ".join(f"{k}={v:.4g}" for k, v in sorted(record.get("metrics", {}).items()))
        lines.append(f"eval {results[-1].parent.name}: {shown}")
    return lines


def summary_line(run: RunDir) -> tuple[str, ...]:
    """One row per run: the first stage that has not completed, or COMPLETED."""
    states = stage_states(run)
    current = next((s for s in states if s.state != "COMPLETED"), None)
    where = f"{current.stage}: {current.state}" if current else f"COMPLETED ({len(states)} stages)"
    return f"{run.experiment}/{run.name}", launch_record(run).get("executor", "?"), where


def log_path(run: RunDir, stage: str, rank: int, stream: str) -> Path:
    jobs = launch_record(run).get("jobs", {})
    if stage not in jobs:
        raise UserError(f"run {run.name} has no {stage} stage (stages: {', '.join(jobs) or 'none submitted'})")
    return run.submitit / f"{jobs[stage]}_{rank}_log.{stream}"


def show_log(run: RunDir, stage: str, rank: int, stream: str, follow: bool) -> int:
    path = log_path(run, stage, rank, stream)
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


def _stage_finished(run: RunDir, stage: str) -> bool:
    state = next((s.state for s in stage_states(run) if s.stage == stage), "UNKNOWN")
    return state in TERMINAL


def cancel(run: RunDir) -> list[str]:
    """Cancel every stage that has not finished; returns what was cancelled."""
    record = launch_record(run)
    pending = [s for s in stage_states(run) if s.state not in TERMINAL]
    if record.get("executor") == "local":
        for s in pending:
            if pid_alive(int(s.job_id)):
                os.kill(int(s.job_id), 15)
    elif pending:
        subprocess.run(["scancel", *[s.job_id for s in pending]], capture_output=True, timeout=60, check=False)
    return [f"{s.stage} ({s.job_id})" for s in pending]
