"""Time limits on a real SLURM cluster: a run longer than its 1-minute limit is signalled, requeued, resumed from
its last complete checkpoint in the same run directory, and finishes — in one MLflow run whose loss history has
every logged step exactly once.

    .venv/bin/python -m pytest tests/cluster/test_requeue.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

from jobs.spec.rundir import RunDir
from tests.cluster.test_slurm import finished, job_logs, submit, wait_until

STEPS = 240
LOG_EVERY = 10


def test_time_limit_requeues_resumes_and_logs_each_step_once(tmp_path: Path) -> None:
    # Each attempt gets 15-45 s before the warning (SLURM checks limits every 30 s) and spends ~10 s starting:
    # a generous requeue budget keeps the test meaningful on a loaded machine.
    submit(tmp_path, "lora", "tiny-starcoder", "-t", "1", "--max-requeues", "20", "--stages", "train",
           "--name", "short", f"training.max_steps={STEPS}", "training.save_steps=10",
           f"training.logging_steps={LOG_EVERY}", f"training.eval_steps={STEPS}")
    run = tmp_path / "runs" / "tiny-starcoder" / "short"
    states = wait_until(run, finished, timeout=1200)

    assert states[0].state == "COMPLETED", f"{states}\n{job_logs(run)}"
    attempts = [a for a in RunDir(run).attempts() if a["stage"] == "train"]
    assert len(attempts) >= 2, "the 1-minute limit should have forced at least one requeue"
    assert len({a["job_id"] for a in attempts}) == 1, "a requeue keeps the job id"
    assert (run / "final" / ".complete").read_text().strip().endswith(f"step {STEPS}")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny-starcoder")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.`clusterft.stage` = 'train'")
    assert len(runs) == 1, "requeues continue the same MLflow run"
    assert runs[0].info.run_id == json.loads((run / "mlflow.json").read_text())["train"]
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")]
    assert steps == [1, *range(LOG_EVERY, STEPS + 1, LOG_EVERY)], steps
