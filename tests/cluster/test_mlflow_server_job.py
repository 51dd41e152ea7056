"""`launch mlflow-server --as-slurm-job` on the real SLURM cluster: the server starts as a job, the command prints
the URI once it answers, a client logs to it over HTTP into the runs root's store, and scancel stops it.

    .venv/bin/python -m pytest tests/cluster/test_mlflow_server_job.py -q
"""

from __future__ import annotations

import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.integration.conftest import assert_ok, launch
from tests.integration.mlflow_server import free_port


def answers(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_team_server_as_a_slurm_job(tmp_path: Path) -> None:
    port = free_port()
    result = launch("mlflow-server", "--as-slurm-job", "-p", "debug", "--host", "127.0.0.1", "--port", str(port),
                    "--wait", "240", cwd=tmp_path)
    job = re.search(r"^Submitted batch job (\d+) \(mlflow-server\)", result.stdout, re.M)
    try:
        assert_ok(result)
        assert job is not None, result.stdout
        uri = re.search(r"^export MLFLOW_TRACKING_URI=(\S+)$", result.stdout, re.M)
        assert uri is not None and uri.group(1) == f"http://127.0.0.1:{port}", result.stdout

        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri.group(1))
        run = client.create_run(client.create_experiment("team"))
        client.log_metric(run.info.run_id, "eval/loss", 0.5, step=3)
        local = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")  # the store it serves
        assert [m.value for m in local.get_metric_history(run.info.run_id, "eval/loss")] == [0.5]
    finally:
        if job is not None:
            subprocess.run(["scancel", job.group(1)], capture_output=True, timeout=60, check=False)
    deadline = time.monotonic() + 60
    while answers(f"http://127.0.0.1:{port}") and time.monotonic() < deadline:
        time.sleep(1)
    assert not answers(f"http://127.0.0.1:{port}"), "scancel stops the server"
