"""The stage chain: prepare (CPU) → train → export → eval, as separate jobs.

On SLURM each stage is its own job, joined to the one before by `afterok`; every dependant also carries
`--kill-on-invalid-dep=yes`, so when a stage fails SLURM cancels what depends on it instead of leaving it PENDING
(DependencyNeverSatisfied) forever. Locally the stages run one after the other and the chain stops at the first
failure.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jobs.spec.errors import UserError
from jobs.spec.stages import BY_NAME
from launchers.submit.executors import SlurmOptions, slurm_parameters
from jobs.spec.plan import Plan
from jobs.spec.schema import Recipe

@dataclass(frozen=True)
class StageJob:
    """One stage as a SLURM job: its name and its submitit parameters."""

    stage: str
    params: dict[str, Any]


def stage_ranks(recipe: Recipe, plan: Plan, stage: str) -> tuple[int, int]:
    """(nodes, ranks per node) of a stage: train gets the plan's; eval splits its generation over eval.ranks ranks
    on one node (default: a rank per GPU of a node, 1 on CPU); prepare and export are one task."""
    if stage == "train":
        return plan.nodes, plan.ranks_per_node
    if stage == "eval":
        return 1, recipe.eval.ranks or recipe.resources.gpus_per_node or 1
    return 1, 1


def stage_parameters(recipe: Recipe, plan: Plan, options: SlurmOptions, stage: str) -> dict[str, Any]:
    """The train stage gets the recipe's nodes and GPUs, eval a GPU per rank, the others one task without GPUs."""
    params = slurm_parameters(recipe, plan, replace(options, job_name=f"{options.job_name}-{stage}"))
    if stage == "train":
        return params
    nodes, ranks = stage_ranks(recipe, plan, stage)
    params.update(nodes=nodes, ntasks_per_node=ranks)
    if not BY_NAME[stage].needs_gpu:
        params.pop("gpus_per_node", None)
    elif "gpus_per_node" in params:
        params["gpus_per_node"] = ranks
    return params


def chain_jobs(
    recipe: Recipe, plan: Plan, options: SlurmOptions, stages: tuple[str, ...], srun_args: list[str]
) -> list[StageJob]:
    """Each stage's parameters; a dependant's `dependency` is filled in at submission (it needs the job id)."""
    jobs = []
    for index, stage in enumerate(stages):
        params = stage_parameters(recipe, plan, options, stage)
        if srun_args:
            params["srun_args"] = list(srun_args)
        if index > 0:
            params.pop("dependency", None)  # the user's --dependency applies to the first stage
        if index > 0 or "dependency" in params:
            params["additional_parameters"] = {**params["additional_parameters"], "kill-on-invalid-dep": "yes"}
        jobs.append(StageJob(stage, params))
    return jobs


def submit_chain(
    tasks: dict[str, Any], jobs: list[StageJob], folder: Path, max_requeues: int, python: str
) -> dict[str, str]:
    """Submit every stage, each after the one before; returns stage → SLURM job id.

    sbatch's own refusals (an unknown partition, a dependency on a job that does not exist) become one-line
    UserErrors; on any failure (a refusal, Ctrl-C) the stages already submitted are cancelled: nothing is left behind.
    """
    import submitit
    from submitit.core.utils import FailedJobError

    ids: dict[str, str] = {}
    previous: str | None = None
    try:
        for job in jobs:
            params = dict(job.params)
            if previous is not None:
                params["dependency"] = f"afterok:{previous}"
            executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=max_requeues, python=python)
            executor.update_parameters(**params)
            captured = io.StringIO()
            try:
                with contextlib.redirect_stderr(captured):  # submitit echoes sbatch's stderr: we report it once
                    submitted = executor.submit(tasks[job.stage])
            except FailedJobError as err:
                raise UserError(f"sbatch refused the {job.stage} job: {sbatch_message(str(err))}") from None
            previous = ids[job.stage] = str(submitted.job_id)
    except BaseException:  # a refusal, Ctrl-C, anything: no half chain stays queued
        cancel_jobs(list(ids.values()))
        raise
    return ids


def sbatch_message(stderr: str) -> str:
    """sbatch's error lines, without the 'sbatch: error: ' prefixes, on one line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("sbatch: error: ") for line in lines if "error" in line.lower()]
    return "; ".join(errors or lines[-1:]) or "no message"


DEPENDENCY_TYPES = ("after", "afterany", "afterok", "afternotok", "aftercorr", "afterburstbuffer")
_DEPENDENCY_ITEM = re.compile(r"^(?P<type>[a-z]+)(?P<jobs>(?::\d+(?:_\d+)?(?:\+\d+)?)*)$")  # job[_task][+minutes]


def check_dependency(text: str) -> None:
    """--dependency names real jobs: SLURM 22.05 silently ignores a dependency on a job that does not exist
    (the chain would start at once), so every job id is looked up first (squeue, then sacct)."""
    for item in re.split(r"[,?]", text):
        match = _DEPENDENCY_ITEM.match(item)
        if item == "singleton":
            continue
        if not match or match["type"] not in DEPENDENCY_TYPES or not match["jobs"]:
            raise UserError(f"flag --dependency {text}: {item!r} is not TYPE:JOBID[:JOBID...] "
                            f"(types: {', '.join(DEPENDENCY_TYPES)}, or singleton)")
        for job_id in (j.split("+")[0] for j in match["jobs"].strip(":").split(":")):
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
