"""The run directory: the unit users see, resume and compare by name.

    <runs root>/<experiment>/<run>/
        recipe.yaml      the resolved recipe (what `launch show` prints)
        plan.json        derived numbers (world size, gradient accumulation, precision, accelerate config)
        launch.json      the command line, executor and job ids
        submitit/        submitit's pickles and per-rank logs (<job>_<rank>_log.out/.err)
        checkpoints/     trainer checkpoints (resume reads the newest complete one)
        final/           the trained model (full) or adapter (lora, qlora)
        export/vN/       each export: merged model/, adapter/, export.json (jobs.export)
        mlflow.json      the MLflow run ids, so requeues continue the same runs

The runs root is --runs-dir, else $CLUSTERFT_RUNS_DIR, else ./runs. The embedded MLflow store lives in it.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launchers.errors import UserError

RUNS_DIR_ENV = "CLUSTERFT_RUNS_DIR"
# Written last into a directory (checkpoint, final model, random-init base, prepared data) once it is whole: a
# directory without it is partial and is never read.
COMPLETE_MARKER = ".complete"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def runs_root(flag: str | None) -> Path:
    return Path(flag or os.environ.get(RUNS_DIR_ENV) or "runs").expanduser().resolve()


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

    @property
    def submitit(self) -> Path:
        return self.path / "submitit"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final(self) -> Path:
        return self.path / "final"

    def check_new(self) -> None:
        """An existing run is never overwritten (checked by --dry-run too)."""
        if self.path.exists():
            raise UserError(f"run {self.experiment}/{self.name} already exists at {self.path}: choose another --name")

    def create(self) -> None:
        self.check_new()
        self.path.mkdir(parents=True)
        self.submitit.mkdir()

    def write_json(self, filename: str, data: dict[str, Any]) -> None:
        write_atomic(self.path / filename, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def read_json(self, filename: str) -> dict[str, Any]:
        path = self.path / filename
        return json.loads(path.read_text()) if path.exists() else {}


def write_atomic(path: Path, text: str) -> None:
    """Write whole or not at all: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")
