"""A real MLflow tracking server for tests: `mlflow server` on 127.0.0.1, a sqlite store and an artifacts directory
under a temporary directory, in its own process group so it can be stopped (an outage) and started again on the
same port and store.

    server = MlflowServer(tmp_path / "mlflow")
    server.start()          # ~9 s here; waits for GET /health, at most 60 s
    server.uri              # http://127.0.0.1:<port>
    server.stop()           # SIGTERM to its process group, then SIGKILL: the outage begins
    server.start()          # same port, same store: the outage ends

Not a test module; the `mlflow_server` fixture (module scope) lives in test_mlflow_tracking.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MlflowServer:
    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.store = self.directory / "store.db"
        self.artifacts = self.directory / "artifacts"
        self.log = self.directory / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        mlflow = Path(sys.executable).with_name("mlflow")
        command = [str(mlflow) if mlflow.exists() else sys.executable, *([] if mlflow.exists() else ["-m", "mlflow"]),
                   "server", "--backend-store-uri", f"sqlite:///{self.store}", "--artifacts-destination",
                   str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True, cwd=self.directory)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"mlflow server exited ({self.process.returncode}):\n{self.tail()}")
            if self.healthy():
                return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {START_TIMEOUT_S:.0f} s:\n{self.tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return response.status == 200 and response.read().strip() == b"OK"
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """SIGTERM to the server's process group (it was started in a session of its own), SIGKILL if it lingers."""
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the server leads its own group
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):  # workers that outlived the leader
            os.killpg(pgid, signal.SIGKILL)
        self.process = None
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self.healthy() and time.monotonic() < deadline:
            time.sleep(0.2)

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
