"""`launch mlflow-server`'s spec: defaults over the runs root, credentials only through the environment.

    .venv/bin/python -m pytest tests/unit/test_mlflow_server.py -q
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from launchers.mlflow_server import STORE_ENV, server_spec
from tests.unit.launch_harness import CliResult, assert_one_error_line


def test_defaults_serve_the_embedded_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORE_ENV, raising=False)
    spec = server_spec(tmp_path, "0.0.0.0", 5000, None, None)
    command = spec.command()
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert command[command.index("--artifacts-destination") + 1] == str(tmp_path / "mlartifacts")
    assert command[-2:] == ["--workers", "1"]
    assert spec.uri("n7") == "http://n7:5000"
    assert server_spec(tmp_path, "127.0.0.1", 5001, None, None).uri("n7") == "http://127.0.0.1:5001"


def test_a_store_with_credentials_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             launch: Callable[..., CliResult]) -> None:
    monkeypatch.setenv(STORE_ENV, "postgresql://mlflow:s3cret-pw@db:5432/mlflow")
    spec = server_spec(tmp_path, "127.0.0.1", 5000, None, None)
    assert "--backend-store-uri" not in spec.command() and "s3cret-pw" not in " ".join(spec.command())
    line = assert_one_error_line(launch("mlflow-server", "--backend-store-uri", "postgresql://u:s3cret-pw@db/x"))
    assert "carries a password; put the URI in $MLFLOW_BACKEND_STORE_URI" in line and "s3cret-pw" not in line
    assert "flag --port 70000: a TCP port" in assert_one_error_line(launch("mlflow-server", "--port", "70000"))
    assert "flag -t/--time: not a SLURM time limit: 'soon'" in assert_one_error_line(
        launch("mlflow-server", "--as-slurm-job", "-t", "soon"))
