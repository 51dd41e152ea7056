"""Shared helpers for integration tests: run the real `launch` CLI in a subprocess, read the run back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCH_TIMEOUT_S = 900  # the machine is noisy: generous, never a performance assertion


def launch_env(env: dict[str, str] | None = None, tracking_uri: str | None = None) -> dict[str, str]:
    """The environment of a launch: offline hub, no telemetry, and MLflow's embedded sqlite store in the runs root
    unless `tracking_uri` names a server (an MLFLOW_TRACKING_URI of the calling shell never leaks in)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    if tracking_uri:
        full_env["MLFLOW_TRACKING_URI"] = tracking_uri
    return full_env


def launch(*args: str, cwd: Path, env: dict[str, str] | None = None,
           tracking_uri: str | None = None) -> subprocess.CompletedProcess[str]:
    """`launch ARGS` as a user types it, from `cwd`; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "launchers.cli.main", *args],
        cwd=cwd, env=launch_env(env, tracking_uri), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
        check=False,
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"launch failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
