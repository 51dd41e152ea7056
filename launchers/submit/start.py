"""Starting a run's stages — for a new launch and for `launch resume` — on SLURM, locally or in-process.

`StartRequest` holds everything needed besides the run directory's own files; `start` submits (SLURM), or runs and
follows (local, debug), and records the job ids in launch.json.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from typing import Any

from launchers.submit.chain import chain_jobs, submit_chain
from launchers.submit.containers import Container
from jobs.spec.errors import UserError
from launchers.submit.executors import SlurmOptions
from jobs.spec.plan import Plan
from jobs.spec.schema import Recipe
from jobs.spec.rundir import RunDir
from launchers.submit.stage import Stage


@dataclass(frozen=True)
class StartRequest:
    run: RunDir
    recipe: Recipe
    plan: Plan
    executor: str  # slurm | local | debug
    stages: tuple[str, ...]
    options: SlurmOptions
    container: Container
    max_requeues: int
    parsable: bool = False


def slurm_options(args: argparse.Namespace, recipe: Recipe) -> SlurmOptions:
    return SlurmOptions(
        job_name=args.job_name or f"{recipe.model_name}-{recipe.method_name}", account=args.account, qos=args.qos,
        constraint=args.constraint, exclusive=args.exclusive, mail_type=args.mail_type, mail_user=args.mail_user,
        dependency=args.dependency, requeue=args.requeue, setup=tuple(args.setup),
    )


def container_of(args: argparse.Namespace) -> Container:
    return Container(apptainer_image=args.container, pyxis_image=args.container_image)


def start(request: StartRequest, record: dict[str, Any], fresh: bool) -> int:
    """Run or submit `request.stages`; `fresh` runs are removed again if SLURM refuses them (nothing was left)."""
    run, plan, recipe = request.run, request.plan, request.recipe
    tasks = {stage: Stage(stage, str(run.path), recipe, plan, request.options.requeue) for stage in request.stages}
    if request.executor == "debug":
        from launchers.submit.follow import run_debug_chain

        return run_debug_chain(tasks, run, record)
    if request.executor == "local":
        from launchers.submit.follow import run_local_chain

        print(f"[launch] {recipe.name}: {', '.join(request.stages)} on {plan.world_size} local rank(s), "
              f"run {run.path}", flush=True)
        return run_local_chain(tasks, plan, recipe, run, record)
    jobs = chain_jobs(recipe, plan, request.options, request.stages, request.container.srun_args(run.root))
    try:
        ids = submit_chain(tasks, jobs, run.submitit, request.max_requeues, request.container.python(run.root))
    except UserError:
        if fresh:
            shutil.rmtree(run.path, ignore_errors=True)  # nothing was submitted: leave nothing behind
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
