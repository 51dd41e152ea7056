"""`launch` against a real 2-node SLURM cluster on loopback (slurm-wlm + munge + slurmdbd + MariaDB).

Every test submits through the real CLI, as a user would, and watches the jobs with sacct.

    .venv/bin/python -m pytest tests/cluster -q        # brings the cluster up first (root)
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from jobs.spec.rundir import RunDir
from launchers.runs import TERMINAL, StageState, stage_states
from tests.integration.conftest import assert_ok, launch

WAIT_S = 900


def submit(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = launch(*args, "-p", "debug", cwd=cwd)
    assert_ok(result)
    assert re.search(r"^Submitted batch job \d+ \(\w+\)$", result.stdout, re.M), result.stdout
    return result


def wait_until(run: Path, done: callable, timeout: float = WAIT_S) -> list[StageState]:  # type: ignore[valid-type]
    """Poll the run's stages (sacct) until `done(states)`; fail with the logs after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        states = stage_states(RunDir(run))
        if done(states):
            return states
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting; states {states}\n{job_logs(run)}")
        time.sleep(2)


def job_logs(run: Path) -> str:
    """The tail of every job's stderr in the run, for failure messages."""
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((run / "submitit").glob("*.err")))


def sacct_fields(job_id: str, fields: str) -> list[str]:
    """One job's accounting fields (the allocation's line), as sacct reports them."""
    done = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", fields], capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout.strip().splitlines()[0].split("|")


def finished(states: list[StageState]) -> bool:
    return all(s.state in TERMINAL for s in states)


def log_text(run: Path, stage: str, rank: int) -> str:
    job = json.loads((run / "launch.json").read_text())["jobs"][stage]
    return (run / "submitit" / f"{job}_{rank}_log.out").read_text()


def test_two_nodes_ddp_chain_runs_prepare_train_export_eval(tmp_path: Path) -> None:
    submit(tmp_path, "lora", "tiny-llama", "-N", "2", "--name", "ddp2", "eval.humaneval_problems=2",
           "eval.fim_samples=2", "--cpu-partition", "cpu", "--sbatch", "comment=clusterft-test")
    run = tmp_path / "runs" / "tiny-llama" / "ddp2"
    states = wait_until(run, finished)
    assert [(s.stage, s.state) for s in states] == [
        ("prepare", "COMPLETED"), ("train", "COMPLETED"), ("export", "COMPLETED"), ("eval", "COMPLETED")], job_logs(run)
    # per-stage resources: the CPU stages ran on the CPU partition; every stage carried the site directive
    jobs = json.loads((run / "launch.json").read_text())["jobs"]
    accounting = {stage: sacct_fields(job, "Partition,Comment") for stage, job in jobs.items()}
    assert accounting == {"prepare": ["cpu", "clusterft-test"], "train": ["debug", "clusterft-test"],
                          "export": ["cpu", "clusterft-test"], "eval": ["debug", "clusterft-test"]}
    assert "rank 0/2 on node n1" in log_text(run, "train", 0)
    assert "rank 1/2 on node n2" in log_text(run, "train", 1)
    assert (run / "final" / "adapter_model.safetensors").exists()
    assert (run / "export" / "v1" / "model" / "model.safetensors").exists()
    assert (run / "export" / "v1" / "adapter" / "adapter_model.safetensors").exists()
    (results,) = (run / "eval").glob("merged-*/results.json")  # the eval stage evaluated the merged export
    assert {"humaneval_pass_at_1", "fim_exact_match", "heldout_loss"} <= set(json.loads(results.read_text())["metrics"])


def test_two_nodes_deepspeed_zero3_full_fine_tune(tmp_path: Path) -> None:
    submit(tmp_path, "full-ft", "tiny-starcoder", "-N", "2", "--name", "zero3", "--stages", "prepare,train",
           "distributed.backend=deepspeed-zero3")
    run = tmp_path / "runs" / "tiny-starcoder" / "zero3"
    states = wait_until(run, finished)
    assert [s.state for s in states] == ["COMPLETED", "COMPLETED"], f"{states}\n{job_logs(run)}"
    assert "DEEPSPEED" in log_text(run, "train", 0)
    assert "rank 1/2 on node n2" in log_text(run, "train", 1)
    assert (run / "final" / ".complete").exists()


def test_failed_train_cancels_its_dependants(tmp_path: Path) -> None:
    # flash-attn is not installed here: the train stage fails when it loads the model.
    submit(tmp_path, "lora", "tiny-starcoder", "--name", "broken", "model.attn_implementation=flash_attention_2")
    run = tmp_path / "runs" / "tiny-starcoder" / "broken"
    states = wait_until(run, finished)
    assert [(s.stage, s.state) for s in states] == [
        ("prepare", "COMPLETED"), ("train", "FAILED"), ("export", "CANCELLED"), ("eval", "CANCELLED")], job_logs(run)


def test_status_logs_and_cancel_on_a_running_job(tmp_path: Path) -> None:
    submit(tmp_path, "lora", "tiny-starcoder", "--name", "long", "--stages", "train,export",
           "training.max_steps=100000")
    run = tmp_path / "runs" / "tiny-starcoder" / "long"
    wait_until(run, lambda states: states[0].state == "RUNNING" and (run / "last_metrics.json").exists())

    status = launch("status", "long", cwd=tmp_path)
    assert_ok(status)
    assert re.search(r"^train\s+\d+\s+RUNNING \(step \d+/100000\)\s+n1", status.stdout, re.M), status.stdout
    assert re.search(r"^export\s+\d+\s+PENDING", status.stdout, re.M), status.stdout
    assert "last metrics (step" in status.stdout

    logs = launch("logs", "long", cwd=tmp_path)
    assert_ok(logs)
    assert "rank 0/1 on node n1" in logs.stdout

    cancelled = launch("cancel", "long", cwd=tmp_path)
    assert_ok(cancelled)
    assert "train" in cancelled.stdout and "export" in cancelled.stdout
    states = wait_until(run, finished, timeout=120)
    assert [s.state for s in states] == ["CANCELLED", "CANCELLED"], states


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["-p", "nosuchpartition"], "invalid partition"),
        (["--dependency", "afterok:999999"], "job 999999 does not exist"),
    ],
    ids=["unknown-partition", "missing-dependency"],
)
def test_sbatch_refusals_are_one_line_and_leave_nothing(tmp_path: Path, flags: list[str], says: str) -> None:
    before = squeue_ids()  # an earlier test's cancelled job may still be completing: only new jobs count
    result = launch("lora", "tiny-starcoder", "--name", "refused", *flags, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("launch: error: "), result.stderr
    assert says in lines[0].lower()
    assert not (tmp_path / "runs").exists(), "a refused first launch left its runs root behind"
    left = {job: what for job, what in squeue_ids().items() if job not in before}
    assert not left, f"nothing may be left queued: {left}"


def squeue_ids() -> dict[str, str]:
    """Every job SLURM still lists (pending, running or completing): id → name and state."""
    jobs = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True, timeout=30, check=True)
    return {line.split()[0]: line for line in jobs.stdout.splitlines() if line.strip()}
