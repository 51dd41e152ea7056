"""Where a stage runs: a SLURM cluster (submitit's SlurmExecutor) or this machine (LocalExecutor).

The same parameters feed `render_sbatch` (for --dry-run) and the real submission, so the script a dry run prints
is the script sbatch receives.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.spec.plan import Plan
from jobs.spec.schema import Recipe


@dataclass(frozen=True)
class SlurmOptions:
    """sbatch flags that are not recipe resources (those are overridden through the recipe itself)."""

    job_name: str = "clusterft"
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclusive: bool = False
    mail_type: str | None = None
    mail_user: str | None = None
    dependency: str | None = None
    requeue: bool = True
    setup: tuple[str, ...] = field(default_factory=tuple)


def slurm_parameters(recipe: Recipe, plan: Plan, options: SlurmOptions) -> dict[str, Any]:
    """submitit SlurmExecutor parameters: one task per rank (one per GPU), resources from the recipe."""
    res = recipe.resources
    params: dict[str, Any] = {
        "job_name": options.job_name,
        "nodes": plan.nodes,
        "ntasks_per_node": plan.ranks_per_node,
        "cpus_per_task": res.cpus_per_task,
        "time": res.minutes,
        # SLURM's warning before the time limit (USR2): 2 minutes, or 3/4 of a shorter limit.
        "signal_delay_s": min(120, res.minutes * 60 * 3 // 4),
        "setup": list(options.setup),
        # explicit, so requeue works where the site's default is JobRequeue=0 (and stays off with --no-requeue)
        "additional_parameters": {"requeue" if options.requeue else "no-requeue": True},
    }
    optional = {
        "gpus_per_node": res.gpus_per_node or None,
        "mem": res.mem,
        "partition": res.partition,
        "account": options.account,
        "qos": options.qos,
        "constraint": options.constraint,
        "exclusive": True if options.exclusive else None,
        "mail_type": options.mail_type,
        "mail_user": options.mail_user,
        "dependency": options.dependency,
    }
    params.update({key: value for key, value in optional.items() if value is not None})
    return params


def submit_command(folder: Path, python: str) -> str:
    """The command each SLURM task runs (what submitit's SlurmExecutor writes for this `python`)."""
    return " ".join([python, "-u -m submitit.core._submit", shlex.quote(str(folder))])


def render_sbatch(params: dict[str, Any], folder: Path, python: str) -> str:
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command=submit_command(folder, python), folder=folder, **params)


def local_gpu_count() -> int:
    """GPUs on this machine, without importing torch (nvidia-smi when present)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


def submit_local(task: Any, ranks: int, recipe: Recipe, folder: Path) -> Any:
    """One process per rank on this machine (gloo on CPU, or one local GPU per rank)."""
    import submitit

    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(
        nodes=1,
        tasks_per_node=ranks,
        gpus_per_node=min(local_gpu_count(), ranks),
        timeout_min=recipe.resources.minutes,
    )
    return executor.submit(task)
