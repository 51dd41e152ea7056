"""What `launch compare` reads from and writes to MLflow: the store behind the runs root (connect), its parent runs
and their stage children (Store, select_parents), each parent summarised as a RunSummary, and the comparison logged
back to every compared parent run as artifacts. MLflow is imported inside functions only.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jobs.spec.errors import UserError, did_you_mean
from jobs.spec.rundir import public_uri, tracking_uri
from launchers.compare.data import Comparison, History, RunSummary, wall_seconds

PARENT_TAG = "mlflow.parentRunId"
HISTORIES = ("eval/loss", "train/loss", "train/learning_rate", "train/tokens_per_s", "train/peak_memory_gb")
PROBE_TIMEOUT_S = 10


def connect(root: Path) -> tuple[Any, str]:
    """An MlflowClient on the runs root's store; UserError when there is no store or the server does not answer."""
    uri = tracking_uri(root)
    try:
        import matplotlib  # noqa: F401 - the plots; checked here so nothing is half done when it is missing
        from mlflow.tracking import MlflowClient
    except ImportError as err:
        raise UserError(f"launch compare needs MLflow and matplotlib, the track extra: pip install -e '.[track]' "
                        f"(here: {err.name or err} is missing)") from None
    if uri.startswith("sqlite:"):
        path = sqlite_path(uri)
        if path is not None and not path.exists():
            why = ("$MLFLOW_TRACKING_URI names a file that does not exist" if os.environ.get("MLFLOW_TRACKING_URI")
                   else f"nothing has been tracked under {root} yet")
            raise UserError(f"no MLflow store at {path}: {why}")
    elif uri.startswith(("http://", "https://")):
        probe(uri)
    with mlflow_errors(uri):  # a sqlite store is opened (and its schema checked) right here
        return MlflowClient(tracking_uri=uri), uri


def sqlite_path(uri: str) -> Path | None:
    """sqlite:////abs/mlflow.db → /abs/mlflow.db; None for an in-memory store."""
    rest = uri.split("://", 1)[1] if "://" in uri else ""
    rest = rest.split("?", 1)[0]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    return Path(rest[1:])


def probe(uri: str) -> None:
    """One quick request (MLflow's own client retries for minutes): any HTTP answer means the server is there."""
    try:
        with urllib.request.urlopen(f"{public_uri(uri).rstrip('/')}/health", timeout=PROBE_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        return  # it answered (401, 404, ...): reachable; MLflow's own calls say what is wrong
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"MLflow tracking server {public_uri(uri)} is unreachable: {reason}") from err


@contextmanager
def mlflow_errors(uri: str) -> Iterator[None]:
    """MLflow's failures (a server error, a file that is not an MLflow store) as one line."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError  # MLflow's own dependency: its sqlite store

    try:
        yield
    except (MlflowException, SQLAlchemyError) as err:
        text = err.message if isinstance(err, MlflowException) else str(err).split("\n", 1)[0]
        message = " ".join(str(text).split())
        raise UserError(f"MLflow at {public_uri(uri)}: {message[:300]}") from err


class Store:
    """Read access with caches: experiment names, and every run of an experiment (parents and their children)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._names: dict[str, str] = {}
        self._runs: dict[str, list[Any]] = {}

    def experiment_name(self, experiment_id: str) -> str:
        if experiment_id not in self._names:
            self._names[experiment_id] = self.client.get_experiment(experiment_id).name
        return self._names[experiment_id]

    def runs(self, experiment_id: str) -> list[Any]:
        if experiment_id not in self._runs:
            found: list[Any] = []
            token = None
            while True:
                page = self.client.search_runs([experiment_id], max_results=1000, page_token=token,
                                               order_by=["attributes.start_time ASC"])
                found.extend(page)
                token = page.token
                if not token:
                    break
            self._runs[experiment_id] = found
        return self._runs[experiment_id]

    def parents(self, experiment_id: str) -> list[Any]:
        return [r for r in self.runs(experiment_id) if PARENT_TAG not in r.data.tags
                and "clusterft.recipe" in r.data.tags]

    def children(self, parent: Any) -> dict[str, Any]:
        """stage → child run (the newest when a stage has several)."""
        stages: dict[str, Any] = {}
        for run in self.runs(parent.info.experiment_id):
            if run.data.tags.get(PARENT_TAG) == parent.info.run_id and "clusterft.stage" in run.data.tags:
                stages[run.data.tags["clusterft.stage"]] = run  # ascending start time: the newest wins
        return stages

    def history(self, run_id: str, key: str) -> tuple[History, int | None]:
        """(step, value) points, one per step (a step logged twice: the later value), and the newest timestamp."""
        by_step: dict[int, tuple[int, float]] = {}
        for metric in self.client.get_metric_history(run_id, key):
            if not math.isfinite(metric.value):
                continue
            seen = by_step.get(metric.step)
            if seen is None or metric.timestamp >= seen[0]:
                by_step[metric.step] = (metric.timestamp, metric.value)
        newest = max((stamp for stamp, _ in by_step.values()), default=None)
        return [(step, value) for step, (_, value) in sorted(by_step.items())], newest


def select_parents(store: Store, root: Path, uri: str, refs: Sequence[str], experiment: str | None) -> list[Any]:
    """RUN arguments (from their mlflow.json), plus every parent run of --experiment; with neither, every parent run."""
    selected: dict[str, Any] = {}
    for ref in refs:
        parent = parent_of_ref(store, root, uri, ref)
        selected.setdefault(parent.info.run_id, parent)
    if experiment is not None:
        found = store.client.get_experiment_by_name(experiment)
        if found is None:
            names = [e.name for e in search_experiments(store.client)]
            hint = did_you_mean(experiment, names) if names else "the store has no experiments"
            raise UserError(f"flag --experiment {experiment}: no such MLflow experiment at {public_uri(uri)}: {hint}")
        parents = store.parents(found.experiment_id)
        if not parents and not refs:
            raise UserError(f"nothing to compare: experiment {experiment} has no clusterft runs at {public_uri(uri)}")
        for parent in parents:
            selected.setdefault(parent.info.run_id, parent)
    if not refs and experiment is None:
        for found in search_experiments(store.client):
            for parent in store.parents(found.experiment_id):
                selected.setdefault(parent.info.run_id, parent)
        if not selected:
            raise UserError(f"nothing to compare: no clusterft runs at {public_uri(uri)}")
    return sorted(selected.values(), key=lambda run: (run.info.start_time or 0, run.info.run_name or ""))


def search_experiments(client: Any) -> list[Any]:
    found: list[Any] = []
    token = None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def parent_of_ref(store: Store, root: Path, uri: str, ref: str) -> Any:
    """The parent MLflow run of a run directory named by `ref` (name or experiment/name), from its mlflow.json."""
    from mlflow.exceptions import MlflowException

    from launchers.runs import find_run

    run = find_run(root, ref)
    ids = run.read_json(run.mlflow_file)
    if not ids:
        raise UserError(f"run {run.experiment}/{run.name} has no mlflow.json: it has not started tracking yet")
    if "parent" not in ids:
        raise UserError(f"run {run.experiment}/{run.name}: mlflow.json has no parent run id (stages: "
                        f"{', '.join(k for k in ids if k != 'tracking_uri') or 'none'}); it predates launch compare")
    try:
        return store.client.get_run(ids["parent"])
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        where = ids.get("tracking_uri")
        hint = (f"; it was tracked at {where}: set MLFLOW_TRACKING_URI" if where and where != public_uri(uri)
                else "")
        raise UserError(f"run {run.experiment}/{run.name}: MLflow run {ids['parent']} not found at "
                        f"{public_uri(uri)}{hint}") from err


def summarise(store: Store, parent: Any) -> RunSummary:
    tags = dict(parent.data.tags)
    summary = RunSummary(store.experiment_name(parent.info.experiment_id), parent.info.run_name or parent.info.run_id,
                         parent.info.run_id, parent.info.status, tags, params=dict(parent.data.params),
                         experiment_id=str(parent.info.experiment_id))
    children = store.children(parent)
    train = children.get("train")
    if train is not None:
        newest: list[int] = []
        for key in HISTORIES:
            if key in train.data.metrics:
                summary.histories[key], stamp = store.history(train.info.run_id, key)
                newest += [stamp] if stamp is not None else []
        summary.train_seconds = wall_seconds(train.info.start_time, train.info.end_time, max(newest, default=None))
    evaluation = children.get("eval")
    if evaluation is not None:
        summary.eval_metrics = {k: v for k, v in evaluation.data.metrics.items() if math.isfinite(v)}
    return summary


def _has_artifacts(client: Any, run_id: str, path: str) -> bool:
    return bool(client.list_artifacts(run_id, path))


def log_artifacts(comparison: Comparison, texts: dict[str, str], plots: dict[str, Path],
                  artifact_path: str) -> str | None:
    """The tables (file name → text: compare.txt, compare.csv) to every compared parent run that does not hold
    `artifact_path` yet, and its group's PNG; a failure is a warning (the comparison itself is printed anyway).
    Returns the artifact path, or None when nothing could be logged."""
    with tempfile.TemporaryDirectory(prefix="clusterft-compare-") as folder:
        tables = [Path(folder) / name for name in texts]
        for path, text in zip(tables, texts.values()):
            path.write_text(text, encoding="utf-8")
        try:
            for g in comparison.groups:
                files = [*tables, *([plots[g.slug]] if g.slug in plots else [])]
                for run in g.runs:
                    if _has_artifacts(comparison.client, run.parent_id, artifact_path):
                        continue
                    for path in files:
                        comparison.client.log_artifact(run.parent_id, str(path), artifact_path=artifact_path)
        except Exception as err:  # noqa: BLE001 - any artifact store's failure (S3, a server, a disk): a warning
            message = " ".join(str(err).split())[:300]
            print(f"warning: could not log the comparison to the parent runs: {message}", file=sys.stderr)
            return None
    return artifact_path
