"""The MLflow spool: every tracking call is a line on local disk first, sent to the server later, in order.

Layout, in the run directory:

    mlflow-spool/
        parent.jsonl  prepare.jsonl  train.jsonl ...   one file per MLflow run (the launch, then each stage)
        <name>.offset                                  bytes of <name>.jsonl the server has acknowledged
        <name>.rejected.jsonl                          lines the server refused for good (4xx), with the reason
        meta.json                                      the tracking URI the run was started with (no credentials)
        files/<run>/...                                redacted copies of the files logged as artifacts
        .lock                                          held (flock) by whichever process is sending

A line is one operation on one MLflow run, named by its key in <run>/mlflow.json ("parent", "train", ...), never
by a run id, so operations can be spooled before the run exists:

    {"op": "create", "run": "train", "parent": "parent", "experiment": "tiny-starcoder", "name": "r1/train",
     "key": "<uuid>", "time": <ms>, "tags": {...}}
    {"op": "params", "run": "parent", "params": {"recipe.training.learning_rate": "0.003", ...}}
    {"op": "tags", "run": "parent", "tags": {"clusterft.restarts": "1"}}
    {"op": "metrics", "run": "train", "step": 12, "time": <ms>, "values": {"train/loss": 1.25, ...}}
    {"op": "artifact", "run": "train", "path": "final", "dir": "final"}     (path relative to the run dir)
    {"op": "status", "run": "train", "status": "RUNNING"}                   (a requeued stage resumes its run)
    {"op": "end", "run": "train", "status": "FINISHED", "time": <ms>}

Appending is cheap and local: the training loop never waits on the network. A `Sender` replays the lines in file
order (parent first, then the stages in chain order) in batches — consecutive metrics/params/tags of one run go in
one log_batch (≤1000 metrics, ≤100 params, ≤100 tags) — and after each acknowledged batch writes the new offset
(atomically). Metrics keep the step and the timestamp they were spooled with.

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
  `clusterft.spool_key`, and the sender looks that tag up before creating — a run created just before a crash is
  found, not made twice. Its id goes to mlflow.json at once.
- One sender at a time per run: a process-wide lock plus flock on mlflow-spool/.lock (on a file system without
  flock the replay is still free of duplicates, by the rule above).

MLflow is imported lazily (the launcher stays light); `launchers.sync` replays a run's spool from a login node.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.spec.redaction import redact_text
from jobs.spec.stages import STAGE_NAMES
from jobs.spec.rundir import RunDir, default_tracking_uri, public_uri, write_atomic

SEND_ORDER = ("parent", *STAGE_NAMES)  # a parent run exists before its children
MAX_METRICS, MAX_PARAMS, MAX_TAGS, MAX_ENTITIES = 1000, 100, 100, 1000  # MLflow's log_batch limits
READ_BYTES = 4 << 20
SPOOL_KEY_TAG = "clusterft.spool_key"
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


def now_ms() -> int:
    return int(time.time() * 1000)


def recorded_uri(run_dir: Path) -> str | None:
    """The tracking URI (without credentials) this run was started with, if it says."""
    run = RunDir(Path(run_dir))
    return run.read_json(run.mlflow_file).get("tracking_uri") or Spool(run.path).meta().get("tracking_uri")


def resolve_uri(run_dir: Path, env_uri: str | None) -> str:
    """Where a replay sends: $MLFLOW_TRACKING_URI (it may carry credentials) when it names the server the run was
    started with, else that server. A different server is an error: the run ids in mlflow.json live there."""
    recorded = recorded_uri(run_dir)
    if env_uri:
        if recorded and public_uri(env_uri) != recorded:
            raise ValueError(f"the run was tracked at {recorded} but MLFLOW_TRACKING_URI is {public_uri(env_uri)}: "
                             "unset it, or point it at the run's server")
        return env_uri
    return recorded or default_tracking_uri(RunDir(Path(run_dir)).root)


@dataclass
class Pending:
    operations: int = 0
    points: int = 0


class Spool:
    """The spool files of one run directory: append, read from an offset, acknowledge."""

    def __init__(self, run_dir: Path) -> None:
        self.run = RunDir(Path(run_dir))
        self.dir = self.run.spool
        self._append_lock = threading.Lock()
        self._checked: set[str] = set()

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.jsonl"

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def files_dir(self, name: str) -> Path:
        return self.dir / "files" / name

    def append(self, name: str, op: dict[str, Any]) -> None:
        """One operation, one line, one write: a reader never takes half a line for a whole one."""
        data = (json.dumps(op, separators=(",", ":"), default=str) + "\n").encode()
        with self._append_lock:
            path = self.path(name)
            if name not in self._checked:
                self.dir.mkdir(parents=True, exist_ok=True)
                if path.exists() and path.stat().st_size:
                    with path.open("rb") as handle:  # a process killed mid-line left half a line: end it
                        handle.seek(-1, os.SEEK_END)
                        if handle.read(1) != b"\n":
                            data = b"\n" + data
                self._checked.add(name)
            with path.open("ab") as handle:
                handle.write(data)

    def names(self) -> list[str]:
        """Spool files in send order: parent, the stages in chain order, then anything else."""
        if not self.dir.is_dir():
            return []
        found = [p.name.removesuffix(".jsonl") for p in self.dir.glob("*.jsonl")
                 if not p.name.endswith(".rejected.jsonl")]
        rank = {name: i for i, name in enumerate(SEND_ORDER)}
        return sorted(found, key=lambda name: (rank.get(name, len(rank)), name))

    def read_lines(self, name: str, offset: int, max_bytes: int = READ_BYTES) -> list[tuple[int, bytes]]:
        """Complete lines from `offset`: (offset after the line, the line)."""
        path = self.path(name)
        if not path.exists():
            return []
        with path.open("rb") as handle:
            handle.seek(offset)
            chunk = handle.read(max_bytes)
        if b"\n" not in chunk and len(chunk) == max_bytes:  # one line longer than max_bytes
            with path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.readline()
        lines: list[tuple[int, bytes]] = []
        position = offset
        for line in chunk.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # still being written
            position += len(line)
            lines.append((position, line))
        return lines

    def ops(self, name: str, offset: int = 0) -> Iterator[dict[str, Any]]:
        """Every readable operation of a spool file from `offset` (unreadable lines are skipped)."""
        while True:
            lines = self.read_lines(name, offset)
            if not lines:
                return
            for end, line in lines:
                offset = end
                op = parse(line)
                if op is not None:
                    yield op

    def offset(self, name: str) -> int:
        path = self.dir / f"{name}.offset"
        try:
            return int(json.loads(path.read_text())["offset"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def set_offset(self, name: str, offset: int) -> None:
        write_atomic(self.dir / f"{name}.offset", json.dumps({"offset": offset}) + "\n")

    def pending(self) -> Pending:
        """Operations (and metric points among them) not acknowledged yet, over every spool file."""
        total = Pending()
        for name in self.names():
            for op in self.ops(name, self.offset(name)):
                total.operations += 1
                if op.get("op") == "metrics":
                    total.points += len(op.get("values", {}))
        return total

    def created(self, name: str) -> bool:
        """The run's creation is spooled (the first line of its file)."""
        return next(iter(self.ops(name)), {}).get("op") == "create"

    def last_steps(self, name: str) -> dict[str, int]:
        """metric key → the highest step spooled for it (sent or not)."""
        steps: dict[str, int] = {}
        for op in self.ops(name):
            if op.get("op") == "metrics" and not op.get("system"):
                for key in op.get("values", {}):
                    steps[key] = max(steps.get(key, -1), int(op["step"]))
        return steps

    def reject(self, name: str, line: dict[str, Any] | bytes, reason: str) -> None:
        record = {"line": line if isinstance(line, dict) else line.decode("utf-8", "replace"),
                  "reason": reason, "time": now_ms()}
        with (self.dir / f"{name}.rejected.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")

    def meta(self) -> dict[str, Any]:
        path = self.dir / "meta.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def set_meta(self, data: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / "meta.json", json.dumps(data, indent=2, sort_keys=True) + "\n")

    @contextlib.contextmanager
    def lock(self, timeout: float) -> Iterator[bool]:
        """Sending rights for this run: True when held (within `timeout` s), False when another sender has them."""
        thread_lock = _thread_lock(self.dir)
        if not thread_lock.acquire(timeout=max(timeout, 0.0)):
            yield False
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                held = _flock(fd, timeout)
                try:
                    yield held
                finally:
                    if held:
                        with contextlib.suppress(OSError):
                            import fcntl

                            fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        finally:
            thread_lock.release()


_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def _thread_lock(directory: Path) -> threading.Lock:
    with _thread_locks_guard:
        return _thread_locks.setdefault(str(directory.resolve()), threading.Lock())


def _flock(fd: int, timeout: float) -> bool:
    import fcntl

    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        except OSError as err:  # no flock on this file system (e.g. Lustre without -o flock): replay stays idempotent
            if err.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL):
                return True
            raise


def parse(line: bytes) -> dict[str, Any] | None:
    try:
        op = json.loads(line)
    except ValueError:
        return None
    return op if isinstance(op, dict) and "op" in op and "run" in op else None


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
            try:
                self.client.create_experiment(name, artifact_location=location)
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            found = self.client.get_experiment_by_name(name)
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


class SenderThread:
    """Drains the spool in the background while a stage runs: a round every `interval` seconds, every `retry`
    seconds while the server is unreachable. `flush(timeout)` waits, bounded, for everything to be sent."""

    def __init__(self, sender: Sender, interval: float = 2.0, retry: float = 5.0,
                 say: Callable[[str], None] | None = None) -> None:
        self.sender = sender
        self.interval = interval
        self.retry = retry
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self.total = SendResult()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._done = threading.Condition()
        self._started = 0  # rounds begun
        self._finished: list[SendResult] = []  # results of rounds ended, in order
        self._flushing = False
        self._down = False
        self._refused_said = 0
        self._thread = threading.Thread(target=self._loop, name="mlflow-spool-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._done:
                self._started += 1
            try:
                result = self.sender.send(should_stop=self._stop.is_set, count_remaining=False)
            except Exception as err:  # noqa: BLE001 - a bug here must not take the stage down
                result = SendResult(error=f"sender failed: {describe(err)}", remaining=1)
            self._report(result)
            with self._done:
                self.total.add(result)
                self._finished.append(result)
                self._done.notify_all()
            pause = self.retry if result.error or result.busy else self.interval
            self._wake.wait(min(pause, 1.0) if self._flushing else pause)
            self._wake.clear()

    def _report(self, result: SendResult) -> None:
        uri = public_uri(self.sender.uri)
        if result.error and not self._down:
            self._down = True
            self.say(f"[tracking] MLflow at {uri} unreachable ({result.error}): spooling to "
                     f"{self.sender.spool.dir}; training goes on")
        elif not result.error and not result.busy and self._down:
            self._down = False
            self.say(f"[tracking] MLflow at {uri} reachable again: sending the spool")
        refused = self.sender.refused_reasons
        if len(refused) > self._refused_said:
            self.say(f"[tracking] MLflow refused {len(refused) - self._refused_said} operation(s) ({refused[-1]}); "
                     f"kept in {self.sender.spool.dir}/*.rejected.jsonl")
            self._refused_said = len(refused)

    def flush(self, timeout: float) -> SendResult:
        """Wait (at most `timeout` s) for a round that began after this call to leave nothing behind."""
        deadline = time.monotonic() + timeout
        with self._done:
            first = self._started + 1 if self._thread.is_alive() else None
            self._flushing = True
        self._wake.set()
        with self._done:
            while first is not None:
                ended = self._finished[first - 1:] if len(self._finished) >= first else []
                if any(r.remaining == 0 and not r.error and not r.busy for r in ended):
                    break
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    break
                self._done.wait(min(left, 1.0))
            last = self._finished[-1] if self._finished else SendResult()
        pending = self.sender.spool.pending()
        return SendResult(remaining=pending.operations, remaining_points=pending.points, error=last.error)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop after the current call (bounded wait); a call still in flight ends with the process."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
