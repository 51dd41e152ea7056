"""`launch mlflow-server`: the command line of launchers/mlflow_server.py."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence

from jobs.spec.errors import UserError
from launchers.cli.base import Parser, runs_arguments


def cmd_mlflow_server(argv: Sequence[str]) -> int:
    parser = Parser(prog="launch mlflow-server", description=(
        "Start a team MLflow tracking server here (until Ctrl-C) or as a SLURM job, over the runs root's sqlite\n"
        "store (or $MLFLOW_BACKEND_STORE_URI, e.g. a database with credentials) and <runs root>/mlartifacts.\n"
        "Prints the MLFLOW_TRACKING_URI to export once the server answers."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", help="interface to listen on (default: 127.0.0.1 here, 0.0.0.0 as a job; "
                        "0.0.0.0 serves the compute nodes)")
    parser.add_argument("--port", type=int, default=5000, help="default 5000")
    parser.add_argument("--backend-store-uri", metavar="URI", help="default: sqlite:///<runs root>/mlflow.db "
                        "(a URI with a password: set $MLFLOW_BACKEND_STORE_URI instead)")
    parser.add_argument("--artifacts-destination", metavar="DIR|URI", help="default: <runs root>/mlartifacts")
    job = parser.add_argument_group("--as-slurm-job: run it as a SLURM job")
    job.add_argument("--as-slurm-job", action="store_true")
    job.add_argument("-p", "--partition")
    job.add_argument("-t", "--time", default="1-00:00:00", help="time limit (default 1-00:00:00)")
    job.add_argument("--mem", default="4G", help="default 4G")
    job.add_argument("-A", "--account")
    job.add_argument("-q", "--qos")
    job.add_argument("--wait", type=float, default=300.0, metavar="S",
                     help="seconds to wait for the job to start and answer (default 300)")
    runs_arguments(parser)
    args = parser.parse_args(argv)
    from jobs.spec.resources import slurm_minutes
    from jobs.spec.rundir import runs_root
    from launchers.mlflow_server import serve, server_spec, submit_server

    root = runs_root(args.runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    host = args.host or ("0.0.0.0" if args.as_slurm_job else "127.0.0.1")
    spec = server_spec(root, host, args.port, args.backend_store_uri, args.artifacts_destination)
    if not args.as_slurm_job:
        print(f"[mlflow-server] store {public_uri_of(spec.store_uri)}, artifacts {spec.artifacts}, "
              f"listening on {host}:{args.port}", flush=True)
        return serve(spec)
    try:
        minutes = slurm_minutes(args.time)
    except ValueError as err:
        raise UserError(f"flag -t/--time: {err}") from None
    if shutil.which("sbatch") is None:
        raise UserError("flag --as-slurm-job: sbatch not found (not a SLURM login node)")
    params = {"job_name": "mlflow-server", "nodes": 1, "ntasks_per_node": 1, "cpus_per_task": 2, "time": minutes,
              "mem": args.mem, **{k: v for k, v in (("partition", args.partition), ("account", args.account),
                                                     ("qos", args.qos)) if v}}
    return submit_server(spec, root, params, args.wait)


def public_uri_of(uri: str | None) -> str:
    from jobs.spec.rundir import public_uri

    return public_uri(uri) if uri else "$MLFLOW_BACKEND_STORE_URI"
