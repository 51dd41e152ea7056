"""Sending a run's spool (jobs.track.spool) to MLflow: `Sender(run_dir, uri).send()` is one round of replay.

A `Sender` replays the lines in file order (parent first, then the stages in chain order) in batches — consecutive
metrics/params/tags of one run go in one log_batch (≤1000 metrics, ≤100 params, ≤100 tags) — and after each
acknowledged batch writes the new offset (atomically). Metrics keep the step and the timestamp they were spooled with.

Guarantees:
- Nothing is lost: a line stays until the server acknowledged it; a transient failure (network, timeout, 5xx,
  authentication) stops the round and the line is retried later (by this stage's sender thread, by the next stage,
  or by `launch sync`). Only lines the server refuses for good (INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST,
  ...) are moved aside, to <name>.rejected.jsonl, with the reason.
- Nothing is duplicated. Delivery is at-least-once (a batch acknowledged just before a crash is resent, its offset
  not yet saved), and every operation is idempotent on the server: a metric point is the primary key (run, key,
  step, timestamp, value) of MLflow's SQL stores, which drop exact duplicates (`SqlAlchemyStore._log_metrics`);
  a param re-logged with the same value, a tag, a status, an artifact (same path) overwrite themselves. Creating a
  run is the one operation that is not: each create line carries a random key, set as the tag
  `mlflow.clusterft.spoolKey` (under mlflow.: MLflow's UI keeps it out of sight), and the sender looks that tag up
  before creating — a run created just before a crash is
  found, not made twice. Its id goes to mlflow.json at once.
- One sender at a time per run: a process-wide lock plus flock on mlflow-spool/.lock (on a file system without
  flock the replay is still free of duplicates, by the rule above).

MLflow is imported lazily (the launcher stays light; `launch sync` runs this on a login node, without torch). A stage
sends from a background thread (jobs.track.sender_thread); `launchers.sync` replays a run's spool from a login node.
Tested against a real local MLflow store, with an outage simulated by a closed port, by
tests/unit/test_tracking_spool.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.spec.redaction import redact_text
from jobs.spec.rundir import public_uri
from jobs.track.launch_info import VIEW_PARAMS
from jobs.track.spool import Spool, parse
from jobs.track.summary import VIEW_TAG, compare_view

MAX_METRICS, MAX_PARAMS, MAX_TAGS, MAX_ENTITIES = 1000, 100, 100, 1000  # MLflow's log_batch limits
SPOOL_KEY_TAG = "mlflow.clusterft.spoolKey"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
# The server refused the operation itself: retrying cannot help. Everything else (no connection, timeouts, 5xx,
# 429, authentication) is transient: the line stays in the spool.
PERMANENT_CODES = frozenset({
    "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST",
    "INVALID_STATE", "MALFORMED_REQUEST",
})
BATCHED = ("metrics", "params", "tags")

# MLflow's HTTP client retries a call for ~4 minutes by default. The spool retries instead, so the sender fails
# fast. Set in the sending process only while a sender exists (refcounted), then restored.
FAST_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # "View run at <uri>": noise, and the URI may hold a password
}
_env_lock = threading.Lock()
_env_users = 0
_env_saved: dict[str, str | None] = {}


@contextlib.contextmanager
def fast_http() -> Iterator[None]:
    """MLflow's HTTP client without its long retries, for as long as the block runs (nestable, thread-safe)."""
    global _env_users
    with _env_lock:
        if _env_users == 0:
            _env_saved.clear()
            for name, value in FAST_HTTP.items():
                _env_saved[name] = os.environ.get(name)
                os.environ[name] = value
        _env_users += 1
    try:
        yield
    finally:
        with _env_lock:
            _env_users -= 1
            if _env_users == 0:
                for name, value in _env_saved.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value



@dataclass
class SendResult:
    """What one round of sending did, and what is left."""

    points: int = 0  # metric values acknowledged
    operations: int = 0  # spool lines acknowledged
    created: list[str] = field(default_factory=list)  # runs created (mlflow.json keys)
    rejected: int = 0  # lines the server refused for good
    remaining: int = 0  # lines not acknowledged yet
    remaining_points: int = 0
    error: str | None = None  # the transient failure that stopped the round (one line, no credentials)
    busy: bool = False  # another sender held the lock

    def add(self, other: SendResult) -> None:
        self.points += other.points
        self.operations += other.operations
        self.created += other.created
        self.rejected += other.rejected
        self.remaining, self.remaining_points = other.remaining, other.remaining_points
        self.error, self.busy = other.error, other.busy


class Transient(Exception):
    """The server could not be reached or could not answer now: keep the line, retry later."""


class Refused(Exception):
    """An operation that can never succeed as written (the server said so, or its file is gone)."""


class Sender:
    """Replays a run's spool to one tracking server. Not thread-safe by itself: `send` takes the spool's lock."""

    def __init__(self, run_dir: Path, uri: str) -> None:
        self.spool = Spool(Path(run_dir))
        self.run = self.spool.run
        self.uri = uri
        self.ids: dict[str, Any] = {}
        self._client: Any = None
        self._experiments: dict[str, str] = {}
        self.refused_reasons: list[str] = []

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def send(self, should_stop: Callable[[], bool] = lambda: False, lock_timeout: float = 5.0,
             count_remaining: bool = True) -> SendResult:
        """One round: every spool file in order, until all is acknowledged, a transient failure, or should_stop().
        `count_remaining=False` skips counting what is left after a failed round (the whole unsent tail: a cost
        the background thread need not pay every few seconds of a long outage); remaining is then -1."""
        result = SendResult()
        with fast_http(), self.spool.lock(lock_timeout) as held:
            if not held:
                result.busy = True
            else:
                self.ids = self.run.read_json(self.run.mlflow_file)
                try:
                    for name in self.spool.names():
                        self._drain(name, result, should_stop)
                        if should_stop():
                            break
                except Transient as err:
                    result.error = str(err)
        if count_remaining or not (result.error or result.busy):
            left = self.spool.pending()  # after a complete round: the lines appended meanwhile, a few
            result.remaining, result.remaining_points = left.operations, left.points
        else:
            result.remaining = result.remaining_points = -1
        return result

    def _drain(self, name: str, result: SendResult, should_stop: Callable[[], bool]) -> None:
        offset = self.spool.offset(name)
        while not should_stop():
            lines = self.spool.read_lines(name, offset)
            if not lines:
                return
            for end, ops in _batches(lines, lambda line, n=name: self._reject(n, line, "not a spool line", result)):
                if ops:
                    self._send(name, ops, result)
                offset = end
                self.spool.set_offset(name, offset)
                if should_stop():
                    return

    def _send(self, name: str, ops: list[dict[str, Any]], result: SendResult) -> None:
        try:
            self._apply(ops, result)
        except Exception as err:  # noqa: BLE001 - sorted into transient (retry) and refused (set aside)
            if not is_refusal(err):
                raise Transient(describe(err)) from err
            if len(ops) > 1:  # find the one the server refuses; the others go through
                for op in ops:
                    self._send(name, [op], result)
                return
            self._reject(name, ops[0], describe(err), result)
            return
        result.operations += len(ops)
        result.points += sum(len(op.get("values", {})) for op in ops if op["op"] == "metrics")

    def _reject(self, name: str, line: dict[str, Any] | bytes, reason: str, result: SendResult) -> None:
        self.spool.reject(name, line, reason)
        result.rejected += 1
        self.refused_reasons.append(reason)

    def _apply(self, ops: list[dict[str, Any]], result: SendResult) -> None:
        kind = ops[0]["op"]
        if kind in BATCHED:
            self._log_batch(ops)
            return
        (op,) = ops
        if kind == "create":
            self._create(op, result)
            return
        run_id = self._run_id(op["run"])
        if kind == "artifact":
            path = Path(op["path"]) if Path(op["path"]).is_absolute() else self.run.path / op["path"]
            if not path.exists():
                raise Refused(f"artifact {op['path']} no longer exists")
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), op.get("dir") or None)
            else:
                self.client.log_artifact(run_id, str(path), op.get("dir") or None)
        elif kind == "status":
            self.client.update_run(run_id, status=op["status"])
        elif kind == "end":
            self.client.set_terminated(run_id, op.get("status", "FINISHED"), end_time=op.get("time"))
        else:
            raise Refused(f"unknown operation {kind!r}")

    def _log_batch(self, ops: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        run_id = self._run_id(ops[0]["run"])
        metrics = [Metric(key, float(value), int(op["time"]), int(op["step"]))
                   for op in ops if op["op"] == "metrics" for key, value in op["values"].items()]
        params = [Param(k, str(v)) for op in ops if op["op"] == "params" for k, v in op["params"].items()]
        tags = [RunTag(k, str(v)) for op in ops if op["op"] == "tags" for k, v in op["tags"].items()]
        while metrics or params or tags:  # one spooled line may hold more than one call's worth (params)
            p, params = params[:MAX_PARAMS], params[MAX_PARAMS:]
            t, tags = tags[:MAX_TAGS], tags[MAX_TAGS:]
            room = MAX_ENTITIES - len(p) - len(t)
            m, metrics = metrics[:min(MAX_METRICS, room)], metrics[min(MAX_METRICS, room):]
            self.client.log_batch(run_id, metrics=m, params=p, tags=t, synchronous=True)

    def _run_id(self, target: str) -> str:
        run_id = self.ids.get(target)
        if not run_id:
            raise Refused(f"run {target!r} was never created (see {target}.rejected.jsonl)")
        return str(run_id)

    def _create(self, op: dict[str, Any], result: SendResult) -> None:
        target = op["run"]
        if self.ids.get(target):
            return  # created already (a relaunch spooled it again)
        experiment_id = self._experiment(op["experiment"])
        key = str(op["key"])
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`{SPOOL_KEY_TAG}` = '{key}'",
                                        max_results=1)
        if found:  # created just before a crash, its id not saved: the same run, not a second one
            run_id = found[0].info.run_id
        else:
            tags = {**op.get("tags", {}), SPOOL_KEY_TAG: key}
            parent = self.ids.get(op.get("parent") or "")
            if parent:
                tags["mlflow.parentRunId"] = parent
            run = self.client.create_run(experiment_id, start_time=op.get("time"), tags=tags, run_name=op.get("name"))
            run_id = run.info.run_id
        fresh = self.run.read_json(self.run.mlflow_file)
        fresh.update({target: run_id, "tracking_uri": public_uri(self.uri)})
        self.run.write_json(self.run.mlflow_file, fresh)
        self.ids = fresh
        result.created.append(target)

    def _experiment(self, name: str) -> str:
        if name in self._experiments:
            return self._experiments[name]
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is None:
            location = None
            if self.uri.startswith("sqlite:"):  # the embedded store keeps artifacts next to it, in the runs root
                location = (self.run.root / "mlartifacts" / name).as_uri()
            try:  # a fine-tuning experiment: MLflow 3's UI opens it on runs and charts, not its GenAI pages
                tags = {EXPERIMENT_KIND_TAG: "finetuning", VIEW_TAG: compare_view(VIEW_PARAMS)}
                self.client.create_experiment(name, artifact_location=location, tags=tags)
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            found = self.client.get_experiment_by_name(name)
        if found is not None and found.lifecycle_stage != "deleted" and VIEW_TAG not in found.tags:
            self.client.set_experiment_tag(found.experiment_id, VIEW_TAG, compare_view(VIEW_PARAMS))  # made elsewhere
        if found is None or found.lifecycle_stage == "deleted":
            # not a refusal: nothing is dropped; restore the experiment (or remove it for good) and sync again
            raise Transient(f"experiment {name!r} is deleted on the server: restore it, then `launch sync`")
        self._experiments[name] = str(found.experiment_id)
        return self._experiments[name]


def _batches(lines: list[tuple[int, bytes]],
             on_bad: Callable[[bytes], None]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Consecutive metrics/params/tags of one run in one batch (within log_batch's limits); anything else alone.
    Yields (offset after the batch, its operations)."""
    batch: list[dict[str, Any]] = []
    end = 0
    counts = {"metrics": 0, "params": 0, "tags": 0}
    limits = {"metrics": MAX_METRICS, "params": MAX_PARAMS, "tags": MAX_TAGS}
    for line_end, line in lines:
        op = parse(line)
        if op is None:
            if batch:
                yield end, batch
                batch, counts = [], dict.fromkeys(counts, 0)
            on_bad(line)
            yield line_end, []
            continue
        kind = op["op"]
        size = len(op.get("values") or op.get("params") or op.get("tags") or {}) if kind in BATCHED else 0
        fits = (kind in BATCHED and batch and batch[0]["op"] in BATCHED and batch[0]["run"] == op["run"]
                and counts[kind] + size <= limits[kind] and sum(counts.values()) + size <= MAX_ENTITIES)
        if batch and not fits:
            yield end, batch
            batch, counts = [], dict.fromkeys(counts, 0)
        batch.append(op)
        end = line_end
        if kind in BATCHED:
            counts[kind] += size
        else:
            yield end, batch
            batch, counts = [], dict.fromkeys(counts, 0)
    if batch:
        yield end, batch


def is_refusal(err: BaseException) -> bool:
    if isinstance(err, Refused):
        return True
    if isinstance(err, Transient):
        return False
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover - mlflow is there wherever a sender runs
        return False
    if isinstance(err, MlflowException):
        return err.error_code in PERMANENT_CODES
    return isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError, TypeError, KeyError))


def describe(err: BaseException) -> str:
    """One line, no credentials: 'connection refused', 'timed out', or the error's first line."""
    text = str(err)
    for pattern, short in ((r"Connection refused", "connection refused"), (r"timed out", "timed out"),
                           (r"Name or service not known|nodename nor servname", "unknown host"),
                           (r"Connection reset|RemoteDisconnected|Connection aborted", "connection reset")):
        if re.search(pattern, text):
            return short
    code = getattr(err, "error_code", None)
    first = (text.strip().splitlines() or [""])[0][:300]
    return redact_text(f"{code or type(err).__name__}: {first}")
