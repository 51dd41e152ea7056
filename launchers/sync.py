"""`launch sync RUN`: send to MLflow what a run's stages could not (the server was down), from the run's spool.

Every tracking call of a stage is first a line in <run>/mlflow-spool/ (jobs.track.spool); a stage sends its spool while it
runs and for a bounded time at its end. What is left — runs not even created yet included — is sent here, in order,
with the original steps and timestamps; running it twice sends nothing twice. MLflow is imported only when there is
something to send (the CLI stays light).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from jobs.spec.errors import UserError
from jobs.spec.rundir import RunDir, public_uri


@dataclass(frozen=True)
class SyncReport:
    run: str  # experiment/name
    uri: str  # the tracking server, without credentials
    points: int  # metric points sent
    operations: int  # spooled operations sent, metric lines included
    created: tuple[str, ...]  # runs created now (mlflow.json keys: "parent", "train", ...)
    rejected: int  # operations the server refused for good (kept in mlflow-spool/*.rejected.jsonl)
    remaining: int  # operations still spooled (0 unless a stage is still writing)


def sync_run(run_dir: Path, *, uri: str | None = None, lock_timeout_s: float = 30.0) -> SyncReport:
    """Replay every stage's unsent spool of the run in `run_dir`; print and return what was sent.

    `uri`: the tracking server (default: $MLFLOW_TRACKING_URI if it names the server the run was started with,
    else that server, from mlflow.json). An unreachable server, a different server, or a spool busy with another
    sender is a UserError (one line); nothing spooled is lost either way.
    """
    from jobs.track.sender import Sender
    from jobs.track.spool import Spool, resolve_uri

    run = RunDir(Path(run_dir))
    label = f"{run.experiment}/{run.name}"
    spool = Spool(run.path)
    if not spool.names():
        print(f"[sync] {label}: nothing spooled (no stage has tracked this run yet)")
        return SyncReport(label, "", 0, 0, (), 0, 0)
    try:
        target = uri or resolve_uri(run.path, os.environ.get("MLFLOW_TRACKING_URI"))
    except ValueError as err:
        raise UserError(f"sync {label}: {err}") from None
    public = public_uri(target)
    before = spool.pending()
    if before.operations == 0:
        print(f"[sync] {label}: nothing to send, MLflow at {public} has everything")
        return SyncReport(label, public, 0, 0, (), 0, 0)
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:  # say so, rather than blame the server
        raise UserError(f"sync {label}: MLflow is not installed here: pip install -e '.[track]' (the spool stays in "
                        f"{spool.dir})")
    sender = Sender(run.path, target)
    result = sender.send(lock_timeout=lock_timeout_s)
    if result.busy:
        raise UserError(f"sync {label}: another process is sending this run's spool (a stage still running?); "
                        "try again when it ends")
    if result.error:
        raise UserError(f"sync {label}: MLflow at {public} is unreachable ({result.error}); sent "
                        f"{result.points} metric point(s) before that, {result.remaining} operation(s) stay "
                        f"spooled in {spool.dir}")
    report = SyncReport(label, public, result.points, result.operations, tuple(result.created), result.rejected,
                        result.remaining)
    parts = [f"[sync] {label}: sent {report.points} metric point(s) and {report.operations} operation(s) in all "
             f"to {public}"]
    if report.created:
        parts.append(f"created runs: {', '.join(report.created)}")
    if report.rejected:
        parts.append(f"{report.rejected} refused by the server (see {spool.dir}/*.rejected.jsonl)")
    if report.remaining:
        parts.append(f"{report.remaining} still spooled (a stage is still writing)")
    print("; ".join(parts))
    return report
