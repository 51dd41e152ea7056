"""SLURM through submitit: sbatch options, the parameters of a job, the one place a SlurmExecutor is built, and
sbatch's own answers (refusals, dependencies, cancellation).

The same parameters feed `render_sbatch` (for --dry-run) and `submit` (the real submission), so the script a dry
run prints is the script sbatch receives. Used by the stage chain (launchers/submit/chain.py) and the MLflow server
job (launchers/mlflow_server.py); tested by tests/unit/test_dry_run.py (golden sbatch files) and tests/cluster/.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.spec.errors import UserError
from jobs.spec.resources import slurm_minutes
from jobs.spec.schema import Recipe
from jobs.spec.stages import BY_NAME


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


def slurm_parameters(recipe: Recipe, options: SlurmOptions, stage: str, nodes: int, ranks: int,
                     gpus: int) -> dict[str, Any]:
    """submitit SlurmExecutor parameters of one stage's job: `nodes` × `ranks` tasks (a task per rank), `gpus` per
    node (0: none, as for the CPU stages), and the stage's partition, CPUs, memory and time from the recipe
    (`ResourcesSpec.of`), plus the site's own sbatch directives. submitit's default --wckey=submitit is dropped
    (sites that enforce wckeys reject it): set one with resources.sbatch.wckey."""
    res = recipe.resources
    own = res.of(stage, BY_NAME[stage].needs_gpu)
    minutes = slurm_minutes(own.time or res.time)
    typed = res.gpu_type if gpus and res.gpu_type else None
    params: dict[str, Any] = {
        "job_name": f"{options.job_name}-{stage}",
        "nodes": nodes,
        "ntasks_per_node": ranks,
        "cpus_per_task": own.cpus_per_task,
        "time": minutes,
        # SLURM's warning before the time limit (USR2): 2 minutes, or 3/4 of a shorter limit.
        "signal_delay_s": min(120, minutes * 60 * 3 // 4),
        "setup": list(options.setup),
        "wckey": None,
        # explicit, so requeue works where the site's default is JobRequeue=0 (and stays off with --no-requeue)
        "additional_parameters": {"requeue" if options.requeue else "no-requeue": True, **res.sbatch},
    }
    constraints = [c for c in (options.constraint, typed if res.gpu_type_as == "constraint" else None) if c]
    optional = {
        "gpus_per_node": (f"{typed}:{gpus}" if typed and res.gpu_type_as == "gres" else gpus) if gpus else None,
        "mem": own.mem,
        "partition": own.partition,
        "account": options.account,
        "qos": options.qos,
        "constraint": "&".join(f"({c})" if "|" in c else c for c in constraints) or None,
        "exclusive": True if options.exclusive else None,
        "mail_type": options.mail_type,
        "mail_user": options.mail_user,
        "dependency": options.dependency,
    }
    params.update({key: value for key, value in optional.items() if value is not None})
    return params


def srun_arguments(cpus_per_task: int, gpus: bool) -> list[str]:
    """What each task's srun needs besides the job's sbatch options: the CPUs (since SLURM 22.05 srun does not
    inherit sbatch's --cpus-per-task, and a rank may get a single core), --kill-on-bad-exit=1 (one crashed rank ends
    the step instead of leaving the others waiting in a collective until its timeout) and, where the job has GPUs,
    --gpu-bind=none: every task sees every GPU of its node and rank r takes cuda:LOCAL_RANK (a site default that
    binds one GPU per task would show each rank one device, and the job checks it sees a GPU for each local rank)."""
    return [f"--cpus-per-task={cpus_per_task}", "--kill-on-bad-exit=1", *(["--gpu-bind=none"] if gpus else [])]


def submit_command(folder: Path, python: str) -> str:
    """The command each SLURM task runs (what submitit's SlurmExecutor writes for this `python`)."""
    return " ".join([python, "-u -m submitit.core._submit", shlex.quote(str(folder))])


def render_sbatch(params: dict[str, Any], folder: Path, python: str) -> str:
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command=submit_command(folder, python), folder=folder, **params)


def slurm_executor(folder: Path, params: dict[str, Any], max_requeues: int = 0, python: str | None = None) -> Any:
    """submitit's SlurmExecutor for one job: `params` as sbatch options, `python` the command that runs each task."""
    import submitit

    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=max_requeues, python=python)
    executor.update_parameters(**params)
    return executor


def submit(executor: Any, task: Any, what: str) -> Any:
    """Submit `task`; sbatch's refusal (an unknown partition, a dependency on a job that does not exist) becomes
    one UserError line naming `what` was refused."""
    from submitit.core.utils import FailedJobError

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):  # submitit echoes sbatch's stderr: we report it once
            return executor.submit(task)
    except FailedJobError as err:
        raise UserError(f"sbatch refused the {what}: {sbatch_message(str(err))}") from None


def sbatch_message(stderr: str) -> str:
    """sbatch's error lines, without the 'sbatch: error: ' prefixes, on one line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("sbatch: error: ") for line in lines if "error" in line.lower()]
    return "; ".join(errors or lines[-1:]) or "no message"


DEPENDENCY_TYPES = ("after", "afterany", "afterok", "afternotok", "aftercorr", "afterburstbuffer")
_DEPENDENCY_ITEM = re.compile(r"^(?P<type>[a-z]+)(?P<jobs>(?::\d+(?:_\d+)?(?:\+\d+)?)*)$")  # job[_task][+minutes]


def dependency_jobs(text: str) -> list[str]:
    """The job ids of a --dependency, checked for SLURM's syntax (TYPE:JOBID[:JOBID...], joined by , or ?)."""
    jobs = []
    for item in re.split(r"[,?]", text):
        match = _DEPENDENCY_ITEM.match(item)
        if item == "singleton":
            continue
        if not match or match["type"] not in DEPENDENCY_TYPES or not match["jobs"]:
            raise UserError(f"flag --dependency {text}: {item!r} is not TYPE:JOBID[:JOBID...] "
                            f"(types: {', '.join(DEPENDENCY_TYPES)}, or singleton)")
        jobs += [j.split("+")[0] for j in match["jobs"].strip(":").split(":")]
    return jobs


def check_dependency(text: str) -> None:
    """--dependency names real jobs: SLURM 22.05 silently ignores a dependency on a job that does not exist
    (the chain would start at once), so every job id is looked up first (squeue, then sacct)."""
    for job_id in dependency_jobs(text):
        if not _job_known(job_id):
            raise UserError(f"flag --dependency {text}: job {job_id} does not exist (unknown to squeue and sacct)")


def _job_known(job_id: str) -> bool:
    for command in (["squeue", "-h", "-j", job_id, "-o", "%i"], ["sacct", "-X", "-n", "-j", job_id, "-o", "JobID"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0 and done.stdout.strip():
            return True
    return False


def cancel_jobs(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60, check=False)
