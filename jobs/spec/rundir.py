"""The run directory: the unit users see, resume and compare by name. `RunDir` owns every name in it.

    <runs root>/<experiment>/<run>/
        recipe.yaml        the resolved recipe (what `launch show` prints)
        plan.json          derived numbers (world size, gradient accumulation, precision, accelerate config)
        launch.json        the command line, executor, stages, resolved SLURM options, container and job ids (local
                           runs: each job's process tag and the launching process, launchers/submit/local_job.py)
        cancelled.json     the local jobs `launch cancel` or the launch's Ctrl-C stopped (their state is CANCELLED)
        attempts.jsonl     one line each time a stage starts on rank 0 (requeues are counted from it)
        last_metrics.json  the train stage's latest logged metrics (`launch status`)
        mlflow.json        the MLflow run ids, so requeues continue the same runs
        mlflow-spool/      metrics and artifacts not yet sent to MLflow (jobs.track)
        submitit/          submitit's pickles and per-rank logs (<job>_<rank>_log.out/.err)
        base/              the random-init base of a `model.init: random` recipe
        checkpoints/       trainer checkpoints (resume reads the newest complete one)
        final/             the trained model (full) or adapter (lora, qlora)
        export/vN/         each export: model/, adapter/, gguf/, export.json (jobs.export)
        eval/<model>-<time>/   results.json and per-problem results (jobs.eval)
        judge/<other>-<time>/  `launch judge` verdicts
    <runs root>/cache/prepared/<key>/   prepared data, shared by runs (jobs.prepare)
    <runs root>/cache/architectures/    the linear modules of each config.json (jobs.common.architecture)
    <runs root>/mlflow.db               the embedded MLflow store

A directory that is written in steps (a checkpoint, final/, base/, a prepared cache) holds COMPLETE_MARKER once it
is whole; without it, it is partial and never read. A run's own file that cannot be read as written (empty, cut
short, missing) is a `DamagedFile`: one line naming it, never a traceback. The runs root is --runs-dir, else
$CLUSTERFT_RUNS_DIR, else ./runs.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.spec.errors import UserError
from jobs.spec.plan import Plan

RUNS_DIR_ENV = "CLUSTERFT_RUNS_DIR"
COMPLETE_MARKER = ".complete"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LAUNCH_FILE = "launch.json"  # the mark of a run directory: `launch status` lists the directories that have one
EXPORT_RECORD = "export.json"  # inside each export/vN/
EVAL_RESULTS = "results.json"  # inside each eval/<model>-<time>/
_VERSION = re.compile(r"^v(\d+)$")


class DamagedFile(UserError):
    """A run's own file that cannot be read as launch wrote it: `path` and what is wrong with it, e.g. "is not
    valid JSON (empty)". `launch status` lists such a run as DAMAGED; every other command stops on it (exit 2)."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path = path
        self.problem = problem


def runs_root(flag: str | None) -> Path:
    return Path(flag or os.environ.get(RUNS_DIR_ENV) or "runs").expanduser().resolve()


def check_writable_root(root: Path, flag: str | None) -> None:
    """A runs root a launch can write into: a directory (or one that can be made) this user may write."""
    label = "flag --runs-dir" if flag else f"${RUNS_DIR_ENV}" if os.environ.get(RUNS_DIR_ENV) else "the runs root"
    existing = next(path for path in (root, *root.parents) if path.exists())
    if not existing.is_dir():
        raise UserError(f"{label} {root}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{label} {root}: {existing} is not writable by this user")


def default_tracking_uri(root: Path) -> str:
    """MLflow's embedded default: a sqlite store in the runs root (its file store is deprecated)."""
    return f"sqlite:///{root / 'mlflow.db'}"


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


def public_uri(uri: str) -> str:
    """A tracking URI without credentials (user:password@host): safe to print or write to disk."""
    scheme, sep, rest = uri.partition("://")
    host, slash, path = rest.partition("/")
    if sep and "@" in host:
        return f"{scheme}://{host.rpartition('@')[2]}{slash}{path}"
    return uri


def check_name(name: str, flag: str) -> str:
    if not NAME_PATTERN.match(name):
        raise UserError(f"{flag} {name!r}: use letters, digits, '.', '_' or '-' (at most 128, no leading '-')")
    return name


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def new(cls, root: Path, experiment: str, name: str) -> RunDir:
        return cls(root / experiment / name)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def experiment(self) -> str:
        return self.path.parent.name

    @property
    def root(self) -> Path:
        return self.path.parent.parent

    # files of the run
    @property
    def recipe_file(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def plan_file(self) -> Path:
        return self.path / "plan.json"

    @property
    def launch_file(self) -> Path:
        return self.path / LAUNCH_FILE

    @property
    def cancelled_file(self) -> Path:
        return self.path / "cancelled.json"

    @property
    def attempts_file(self) -> Path:
        return self.path / "attempts.jsonl"

    @property
    def last_metrics_file(self) -> Path:
        return self.path / "last_metrics.json"

    @property
    def mlflow_file(self) -> Path:
        return self.path / "mlflow.json"

    # directories of the run
    @property
    def spool(self) -> Path:
        return self.path / "mlflow-spool"

    @property
    def submitit(self) -> Path:
        return self.path / "submitit"

    @property
    def base(self) -> Path:
        return self.path / "base"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final(self) -> Path:
        return self.path / "final"

    @property
    def exports(self) -> Path:
        return self.path / "export"

    @property
    def evals(self) -> Path:
        return self.path / "eval"

    @property
    def judgements(self) -> Path:
        return self.path / "judge"

    def prepared_cache(self, key: str) -> Path:
        """Prepared data is shared by every run of the runs root with the same content key."""
        return self.root / "cache" / "prepared" / key

    @property
    def architecture_cache(self) -> Path:
        """Module names of the architectures LoRA targets were checked against (the launcher's check, cached)."""
        return self.root / "cache" / "architectures"

    def check_new(self) -> None:
        """An existing run is never overwritten (checked by --dry-run too)."""
        if self.path.exists():
            raise UserError(f"run {self.experiment}/{self.name} already exists at {self.path}: choose another --name")

    def create(self) -> Path:
        """Make the run directory; returns the outermost directory this made (the runs root on a first launch),
        which is what removing it again must remove."""
        self.check_new()
        outermost = next(p for p in reversed((self.path, *self.path.parents)) if not p.exists())
        self.path.mkdir(parents=True)
        self.submitit.mkdir()
        return outermost

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    @staticmethod
    def read_json(path: Path, required: bool = False) -> dict[str, Any]:
        """A JSON object the launcher or a stage wrote; {} when the file is not there (unless `required`)."""
        if not path.exists() and not required:
            return {}
        data = _parse_json(path, _read_text(path))
        if not isinstance(data, dict):
            raise DamagedFile(path, f"is not a JSON object (it holds a {type(data).__name__})")
        return data

    def check_recipe(self) -> None:
        """recipe.yaml is there and holds something (what it holds is checked where it is read:
        launchers.recipe.load.resolve_saved)."""
        if not _read_text(self.recipe_file).strip():
            raise DamagedFile(self.recipe_file, "is empty")

    def read_plan(self) -> Plan:
        data = self.read_json(self.plan_file, required=True)
        try:
            return Plan(**data)
        except TypeError:
            raise DamagedFile(self.plan_file, f"is not a plan (keys: {', '.join(sorted(data)) or 'none'})") from None

    # exports: export/v1, v2, ... each renamed into place when whole
    def versions(self) -> list[Path]:
        """The run's complete export versions, oldest first."""
        root = self.exports
        found = [(int(m.group(1)), p) for p in root.glob("v*") if (m := _VERSION.match(p.name))] \
            if root.is_dir() else []
        return [p for _, p in sorted(found)]

    def next_version(self) -> int:
        root = self.exports
        taken = [int(m.group(1)) for p in root.iterdir() if (m := _VERSION.match(p.name))] if root.is_dir() else []
        return max(taken, default=0) + 1

    def complete_checkpoints(self) -> list[int]:
        return sorted(int(p.name.split("-")[1]) for p in self.checkpoints.glob("checkpoint-*")
                      if p.name.split("-")[1].isdigit() and (p / COMPLETE_MARKER).exists())

    def export_source(self, checkpoint: int | None) -> Path:
        """final/, or checkpoints/checkpoint-N, if training completed it; else UserError naming what there is."""
        steps = self.complete_checkpoints()
        have = f"complete checkpoints: {', '.join(map(str, steps))}" if steps else "no complete checkpoint either"
        if checkpoint is None:
            if not (self.final / COMPLETE_MARKER).exists():
                raise UserError(f"run {self.name}: no complete final model in {self.final} (did the train stage "
                                f"finish?); {have}")
            return self.final
        source = self.checkpoints / f"checkpoint-{checkpoint}"
        if not (source / COMPLETE_MARKER).exists():
            state = "partial (a save was interrupted)" if source.is_dir() else "missing"
            raise UserError(f"flag --checkpoint {checkpoint}: checkpoint-{checkpoint} of run {self.name} is {state}; "
                            f"{have}")
        return source

    # attempts: rank 0 appends a line each time a stage starts
    def record_attempt(self, stage: str, job_id: str, node: str) -> None:
        line = json.dumps({"stage": stage, "job_id": job_id, "node": node, "started": time.time()})
        with self.attempts_file.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def attempts(self) -> list[dict[str, Any]]:
        if not self.attempts_file.exists():
            return []
        attempts = []
        for number, line in enumerate(_read_text(self.attempts_file).splitlines(), start=1):
            if line.strip():
                attempt = _parse_json(self.attempts_file, line, f"line {number} ")
                if not isinstance(attempt, dict) or not isinstance(attempt.get("stage"), str):
                    raise DamagedFile(self.attempts_file, f"line {number} is not an attempt of a stage")
                attempts.append(attempt)
        return attempts


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DamagedFile(path, "is missing") from None
    except OSError as err:
        raise DamagedFile(path, f"cannot be read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise DamagedFile(path, "is not UTF-8 text") from None


def _parse_json(path: Path, text: str, where: str = "") -> Any:
    if not text.strip():
        raise DamagedFile(path, f"{where}is not valid JSON (empty)")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        detail = f"{err.msg}, line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) \
            else "nested too deeply"
        raise DamagedFile(path, f"{where}is not valid JSON ({detail})") from None


def write_atomic(path: Path, text: str) -> None:
    """Write whole or not at all: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host still runs (the owner of a local job or of a partial export)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")
