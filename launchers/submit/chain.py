"""The SLURM runner: the stage chain prepare (CPU) → train → export → eval as separate jobs.

Each stage is its own job, joined to the one before by `afterok`; every dependant also carries
`--kill-on-invalid-dep=yes`, so when a stage fails SLURM cancels what depends on it instead of leaving it PENDING
(DependencyNeverSatisfied) forever. Which stages get GPUs comes from the stage registry (jobs/spec/stages.py); the
local runners (launchers/submit/local.py) run the same stages one after the other. Tested by
tests/unit/test_dry_run.py (golden sbatch scripts) and tests/cluster/test_slurm.py (a real cluster).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.spec.errors import UserError
from jobs.spec.plan import Plan
from jobs.spec.schema import Recipe
from jobs.spec.stages import BY_NAME
from launchers.submit.request import StartRequest
from launchers.submit.slurm import SlurmOptions, cancel_jobs, slurm_executor, slurm_parameters, srun_arguments, submit
from launchers.submit.stage import Stage


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
    """The train stage gets the recipe's nodes and GPUs, eval a GPU per rank on one node, the CPU stages one task
    and no GPU; each its own partition, CPUs, memory and time (jobs.spec.resources)."""
    nodes, ranks = stage_ranks(recipe, plan, stage)
    gpus = 0
    if BY_NAME[stage].needs_gpu and recipe.resources.gpus_per_node:
        gpus = recipe.resources.gpus_per_node if stage == "train" else ranks
    return slurm_parameters(recipe, options, stage, nodes, ranks, gpus)


def chain_jobs(
    recipe: Recipe, plan: Plan, options: SlurmOptions, stages: tuple[str, ...], srun_args: list[str]
) -> list[StageJob]:
    """Each stage's parameters; a dependant's `dependency` is filled in at submission (it needs the job id)."""
    jobs = []
    for index, stage in enumerate(stages):
        params = stage_parameters(recipe, plan, options, stage)
        params["srun_args"] = [*srun_arguments(params["cpus_per_task"], "gpus_per_node" in params),
                               *recipe.resources.srun, *srun_args]
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
    ids: dict[str, str] = {}
    previous: str | None = None
    try:
        for job in jobs:
            params = dict(job.params)
            if previous is not None:
                params["dependency"] = f"afterok:{previous}"
            executor = slurm_executor(folder, params, max_requeues, python)
            submitted = submit(executor, tasks[job.stage], f"{job.stage} job")
            previous = ids[job.stage] = str(submitted.job_id)
    except BaseException:  # a refusal, Ctrl-C, anything: no half chain stays queued
        cancel_jobs(list(ids.values()))
        raise
    return ids


def submit_slurm_chain(request: StartRequest, tasks: dict[str, Stage], record: dict[str, Any]) -> int:
    """The runner for SLURM: submit the chain, record the job ids, print them (or only the last with --parsable).
    A new run SLURM refused is removed again, with the directories making it made (the experiment's, the runs
    root): nothing was submitted, so nothing is left behind."""
    run, container = request.run, request.container
    jobs = chain_jobs(request.recipe, request.plan, request.options, request.stages, container.srun_args(run.root))
    try:
        ids = submit_chain(tasks, jobs, run.submitit, request.max_requeues, container.python(run.root))
    except UserError:
        if request.created is not None:
            shutil.rmtree(request.created, ignore_errors=True)
        raise
    record["jobs"].update(ids)
    run.write_json(run.launch_file, record)
    if request.parsable:
        print(ids[request.stages[-1]])
    else:
        for stage, job_id in ids.items():
            print(f"Submitted batch job {job_id} ({stage})")
        print(f"[launch] run {run.experiment}/{run.name}: launch status {run.name}")
    return 0
