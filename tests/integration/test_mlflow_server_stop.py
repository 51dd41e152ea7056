"""`launch mlflow-server` stops promptly on Ctrl-C: the server's whole process group is gone and the port is free
within the grace period (launchers/mlflow_server.py STOP_GRACE_S) plus start-up slack, and the exit status is 0.

A signal handler that waited on the child while the main thread sat in Popen.wait could never reap it (the
interrupted wait holds its lock), so each wait ran to its timeout: Ctrl-C took ~22 s. The time is printed; the
assertion is a bound, not a benchmark.

    .venv/bin/python -m pytest tests/integration/test_mlflow_server_stop.py -q -s
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from launchers.mlflow_server import STOP_GRACE_S
from tests.integration.conftest import launch_env
from tests.integration.mlflow_server import free_port


def test_ctrl_c_stops_the_server_and_frees_the_port(tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "launchers.cli.main", "mlflow-server", "--port", str(port),
                               "--runs-dir", str(tmp_path / "runs")], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=launch_env())
    assert server.stdout is not None
    deadline = time.monotonic() + 120
    for line in server.stdout:
        if "up: export MLFLOW_TRACKING_URI" in line or time.monotonic() > deadline:
            break
    (leader,) = pids("-P", str(server.pid))  # `mlflow server`, in a session of its own
    group = pids("-s", leader)
    assert len(group) > 1, group
    started = time.monotonic()
    server.send_signal(signal.SIGINT)
    assert server.wait(timeout=STOP_GRACE_S + 5) == 0
    took = time.monotonic() - started
    print(f"launch mlflow-server exited {took:.2f} s after SIGINT")
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the port still answers"
    left = [pid for pid in group if os.path.exists(f"/proc/{pid}")]
    assert not left, f"server processes left behind: {left}"


def pids(*selection: str) -> list[str]:
    return subprocess.run(["pgrep", *selection], capture_output=True, text=True, check=False).stdout.split()
