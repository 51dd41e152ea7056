"""`launch mlflow-server`: a team MLflow tracking server, on this machine (a login node) or as a SLURM job.

    launch mlflow-server                                   # here, 127.0.0.1:5000, until Ctrl-C
    launch mlflow-server --host 0.0.0.0 --port 5000        # reachable from the compute nodes
    launch mlflow-server --as-slurm-job -p cpu -t 7-00:00:00   # a job; prints the URI once the server answers
    MLFLOW_BACKEND_STORE_URI=postgresql://u:pw@db/mlflow launch mlflow-server --artifacts-destination /shared/art

The default store is the runs root's sqlite file, the same one runs log to without a server (so earlier runs are on
it), and artifacts go to <runs root>/mlartifacts, where those runs keep theirs. A store URI with a password is taken
from $MLFLOW_BACKEND_STORE_URI only (`mlflow server` reads it there), never from the command line, so it is in no
sbatch script, pickle or log. The server runs with one worker, MLflow's job execution off and telemetry off. Once
GET /health answers, the tracking URI is printed as a line to `eval` (and, for a job, written to
<runs root>/mlflow-server/server.json); stopping it: Ctrl-C here, `scancel JOB` for a job.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from jobs.spec.errors import UserError
from jobs.spec.rundir import default_tracking_uri, public_uri, write_atomic

STORE_ENV = "MLFLOW_BACKEND_STORE_URI"
SERVER_DIR = "mlflow-server"
URI_FILE = "server.json"
STOP_GRACE_S = 1.5
HEALTH_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ServerSpec:
    host: str
    port: int
    store_uri: str | None  # None: from $MLFLOW_BACKEND_STORE_URI (it carries credentials)
    artifacts: str

    def command(self) -> list[str]:
        mlflow = Path(sys.executable).with_name("mlflow")
        launcher = [str(mlflow)] if mlflow.exists() else [sys.executable, "-m", "mlflow"]
        store = ["--backend-store-uri", self.store_uri] if self.store_uri else []
        return [*launcher, "server", *store, "--artifacts-destination", self.artifacts, "--host", self.host,
                "--port", str(self.port), "--workers", "1"]

    def uri(self, hostname: str | None = None) -> str:
        """The URI clients use: this host's name when the server listens on every interface."""
        host = (hostname or socket.gethostname()) if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


def server_spec(root: Path, host: str, port: int, store: str | None, artifacts: str | None) -> ServerSpec:
    """The spec the flags ask for; UserError for a store URI with credentials on the command line."""
    if not 0 < port < 65536:
        raise UserError(f"flag --port {port}: a TCP port, 1-65535")
    if store and public_uri(store) != store:
        raise UserError(f"flag --backend-store-uri {public_uri(store)}: carries a password; put the URI in ${STORE_ENV} "
                        "instead (it is read there, and never written to a script or log)")
    if store is None and not os.environ.get(STORE_ENV):
        store = default_tracking_uri(root)
    return ServerSpec(host, port, store, artifacts or str(root / "mlartifacts"))


def healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class _Stop(Exception):
    """SIGINT or SIGTERM arrived: stop the server (outside the signal handler: a handler that waits on the child
    while the main thread is inside Popen.wait cannot reap it, since the interrupted wait holds its lock)."""


def serve(spec: ServerSpec, uri_file: Path | None = None, hostname: str | None = None) -> int:
    """Run the server in the foreground: print (and write) the URI once it answers; stop it on SIGINT/SIGTERM."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    process = subprocess.Popen(spec.command(), env=env, start_new_session=True)

    def stop(signum: int, frame: object) -> None:
        raise _Stop

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        return _serve(spec, process, uri_file, hostname)
    except _Stop:
        _terminate(process)
        return 0


def _serve(spec: ServerSpec, process: subprocess.Popen[bytes], uri_file: Path | None, hostname: str | None) -> int:
    local = f"http://{'127.0.0.1' if spec.host in ('0.0.0.0', '::') else spec.host}:{spec.port}"
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while not healthy(local):
        if process.poll() is not None:
            print(f"[mlflow-server] mlflow server exited with {process.returncode} before answering", flush=True)
            return process.returncode or 1
        if time.monotonic() > deadline:
            _terminate(process)
            print(f"[mlflow-server] no answer on {local}/health after {HEALTH_TIMEOUT_S:.0f} s", flush=True)
            return 1
        time.sleep(0.5)
    uri = spec.uri(hostname)
    if uri_file is not None:
        write_atomic(uri_file, json.dumps({"uri": uri, "pid": process.pid, "host": socket.gethostname()}) + "\n")
    print(f"[mlflow-server] up: export MLFLOW_TRACKING_URI={uri}", flush=True)
    return process.wait()


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (its own session), SIGKILL if it lingers past STOP_GRACE_S: uvicorn's
    graceful shutdown waits for open browser connections, and Ctrl-C should be done in a moment. The sqlite store
    commits each write in a transaction, so a kill loses nothing that was acknowledged."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=STOP_GRACE_S)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass(frozen=True)
class ServeJob:
    """The SLURM job: serve `spec`, writing the URI to `uri_file` (submitit pickles this, never the store URI's
    credentials: those stay in the environment)."""

    spec: ServerSpec
    uri_file: str

    def __call__(self) -> int:
        # the node's SLURM name is what the other nodes know it by
        return serve(self.spec, Path(self.uri_file), os.environ.get("SLURMD_NODENAME"))


def submit_server(spec: ServerSpec, root: Path, params: dict[str, object], wait_s: float) -> int:
    """sbatch the server; wait until it answers (or its job ends) and print the URI to export."""
    from launchers.submit.slurm import slurm_executor, submit

    folder = root / SERVER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    uri_file = folder / URI_FILE
    uri_file.unlink(missing_ok=True)
    job = submit(slurm_executor(folder, params), ServeJob(spec, str(uri_file)), "server job")
    print(f"Submitted batch job {job.job_id} (mlflow-server); waiting for it to answer", flush=True)
    deadline = time.monotonic() + wait_s
    while not uri_file.exists():
        state = job.state
        if state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "COMPLETED", "BOOT_FAIL"):
            raise UserError(f"server job {job.job_id} ended {state} before answering: see {folder}")
        if time.monotonic() > deadline:
            print(f"[mlflow-server] job {job.job_id} is {state}; the URI will be in {uri_file} once it runs")
            return 0
        time.sleep(1.0)
    uri = json.loads(uri_file.read_text())["uri"]
    print(f"[mlflow-server] job {job.job_id} up on {uri}; stop it with: scancel {job.job_id}\n"
          f"export MLFLOW_TRACKING_URI={uri}", flush=True)
    return 0
