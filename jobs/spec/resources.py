"""What a run asks SLURM for: the train stage's resources, each other stage's where it differs, and the site's own
directives. Part of the recipe (`resources:`); launchers/submit turns it into sbatch and srun options.

    resources:
      nodes: 2
      gpus_per_node: 8
      partition: gpu
      mem: "0"                  # all of each node's memory (SLURM's --mem=0)
      cpu_partition: cpu        # prepare and export: no GPU, so not on the GPU partition (default: the site's)
      stages:
        eval: {time: "2:00:00"}
        export: {mem: 64G}
      sbatch: {reservation: maint, wckey: proj42}   # any other sbatch directive, every stage
      srun: ["--mpi=pmix"]                            # extra srun arguments, every stage
      gpu_type: a100-80gb
      gpu_type_as: constraint   # or gres (--gpus-per-node=a100-80gb:8), or none (default: recorded only)

`launch show METHOD MODEL` prints the resolved section; tests/unit/test_stage_resources.py checks each rule.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field, field_validator

from jobs.spec.redaction import REDACTED, redact_text
from jobs.spec.section import NonNegativeInt, PositiveInt, Section

SLURM_TIME_FORMATS = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
_SLURM_MEM = re.compile(r"^[0-9]+[KMGT]?$")
_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_SBATCH_KEY = re.compile(r"^[a-z][a-z0-9-]*$")
# sbatch options the launcher sets itself, and where a user sets them instead
MANAGED_SBATCH: dict[str, str | None] = {
    "nodes": "-N/--nodes", "ntasks-per-node": "--gpus-per-node (a rank per GPU)", "gpus-per-node": "--gpus-per-node",
    "gpus": "--gpus-per-node", "gres": "resources.gpu_type_as: gres", "cpus-per-task": "--cpus-per-task",
    "mem": "--mem", "time": "-t/--time", "partition": "-p/--partition or --cpu-partition", "job-name": "-J/--job-name",
    "output": "the run directory", "error": "the run directory", "dependency": "--dependency", "signal": None,
    "open-mode": None, "requeue": "--requeue/--no-requeue", "no-requeue": "--requeue/--no-requeue",
    "kill-on-invalid-dep": None, "array": None, "account": "-A/--account", "qos": "-q/--qos",
    "constraint": "--constraint", "exclusive": "--exclusive", "mail-type": "--mail-type", "mail-user": "--mail-user",
}
OTHER_STAGES = ("prepare", "export", "eval")


def slurm_minutes(text: str) -> int:
    """Minutes in a SLURM time limit, rounded up ("1-12" is 2160; "90" is 90; "1:30" is 2)."""
    match = _SLURM_TIME.match(text.strip())
    if not match:
        raise ValueError(f"not a SLURM time limit: {text!r} (formats: {SLURM_TIME_FORMATS})")
    days, first, second, third = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
        total = int(days) * 86400 + hours * 3600 + minutes * 60 + seconds
    elif third is not None:  # HH:MM:SS
        total = int(first) * 3600 + int(second) * 60 + int(third)
    else:  # MM or MM:SS
        total = int(first) * 60 + int(second or 0)
    if total <= 0:
        raise ValueError(f"time limit {text!r} must be positive")
    return math.ceil(total / 60)


def _no_secret(directive: str) -> None:
    """Site directives are written verbatim into each sbatch script: a secret there would stay on disk."""
    if REDACTED in directive or redact_text(directive) != directive:
        raise ValueError(f"{redact_text(directive)}: carries a secret, which would be written into the sbatch "
                         "script: export it in your shell instead (sbatch passes your environment on)")


def _time(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # `time: 90` is 90 minutes, as in sbatch
    if isinstance(value, str):
        slurm_minutes(value)
    return value


def _mem(value: str | None) -> str | None:
    if value is not None and not _SLURM_MEM.match(value):
        raise ValueError(f"not a SLURM memory size: {value!r} (e.g. 4000, 64G, 1T, or 0 for all of a node's; "
                         "units K, M, G, T)")
    return value


class StageResources(Section):
    """One stage's resources where they differ from its defaults (see `Resources.of`)."""

    partition: str | None = None
    cpus_per_task: PositiveInt | None = None
    mem: str | None = None
    time: str | None = None

    _slurm_time = field_validator("time", mode="before")(_time)
    _slurm_mem = field_validator("mem")(_mem)


class ResourcesSpec(Section):
    """The train stage's resources (the defaults of the others), per-stage differences and site directives."""

    nodes: PositiveInt = 1
    gpus_per_node: NonNegativeInt = 0
    tasks_per_node: PositiveInt | None = Field(None, description="ranks per node; default: one per GPU, or 1")
    gpu_type: str | None = None
    gpu_type_as: Literal["none", "constraint", "gres"] = Field(
        "none", description="how SLURM is told gpu_type: a node feature (--constraint) or a typed GPU count")
    cpus_per_task: PositiveInt = 4
    mem: str | None = None
    time: str = "24:00:00"
    partition: str | None = None
    cpu_partition: str | None = Field(
        None, description="partition of the CPU stages (prepare, export); default: the site's default partition")
    stages: dict[Literal["prepare", "export", "eval"], StageResources] = Field(
        default_factory=dict, description="a stage's partition, cpus_per_task, mem, time where they differ")
    sbatch: dict[str, str | int | bool] = Field(
        default_factory=dict, description="other sbatch directives for every stage, e.g. reservation, wckey")
    srun: list[str] = Field(default_factory=list, description="extra srun arguments for every stage")

    _slurm_time = field_validator("time", mode="before")(_time)
    _slurm_mem = field_validator("mem")(_mem)

    @field_validator("sbatch")
    @classmethod
    def _site_directives(cls, value: dict[str, str | int | bool]) -> dict[str, str | int | bool]:
        for key, setting in value.items():
            if not _SBATCH_KEY.match(key):
                raise ValueError(f"{key!r} is not an sbatch option name (lower case, without the leading --)")
            if key in MANAGED_SBATCH:
                instead = MANAGED_SBATCH[key]
                raise ValueError(f"{key}: set by the launcher" + (f"; use {instead}" if instead else ""))
            if setting is False or "\n" in str(setting):
                raise ValueError(f"{key}: {setting!r}: give a value, or true for a flag without one")
            _no_secret(f"{key}={setting}")
        return value

    @field_validator("srun")
    @classmethod
    def _srun_arguments(cls, value: list[str]) -> list[str]:
        for argument in value:
            if not argument.startswith("-") or "\n" in argument:
                raise ValueError(f"{argument!r}: an srun option, e.g. --mpi=pmix")
            _no_secret(argument)
        return value

    @property
    def minutes(self) -> int:
        return slurm_minutes(self.time)

    @property
    def ranks_per_node(self) -> int:
        return self.tasks_per_node or self.gpus_per_node or 1

    def of(self, stage: str, needs_gpu: bool) -> StageResources:
        """A stage's partition, CPUs, memory and time: what `stages.<stage>` sets, else — for a GPU stage — the train
        stage's, or — for a CPU stage — `cpu_partition` (else the site's default partition), the train stage's
        CPUs and time, and the site's default memory (the train stage's --mem is sized for the model on GPUs)."""
        own = self.stages.get(stage, StageResources())  # type: ignore[call-overload]
        return StageResources(
            partition=own.partition or (self.partition if needs_gpu else self.cpu_partition),
            cpus_per_task=own.cpus_per_task or self.cpus_per_task,
            mem=own.mem or (self.mem if needs_gpu else None),
            time=own.time or self.time,
        )
