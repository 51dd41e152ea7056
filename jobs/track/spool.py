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

Appending is cheap and local: the training loop never waits on the network. A sender (jobs.track.sender) reads the
complete lines after a file's acknowledged offset, files in send order (parent first, then the stages in chain
order), and after each acknowledged batch writes the new offset (atomically); lines the server refuses for good go
to <name>.rejected.jsonl with the reason.

Sending rights: `Spool.lock`, a process-wide lock plus flock on mlflow-spool/.lock, held by one sender at a time.

Nothing here imports MLflow: `launchers.sync` reads a run's spool on a login node. Tested with the sender, against a
real local MLflow store, by tests/unit/test_tracking_spool.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.spec.rundir import RunDir, default_tracking_uri, public_uri, write_atomic
from jobs.spec.stages import STAGE_NAMES

SEND_ORDER = ("parent", *STAGE_NAMES)  # a parent run exists before its children
READ_BYTES = 4 << 20


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
