"""The callable submitit runs on every rank: the seam between where a stage runs and what it does.

It turns submitit's environment into torch.distributed variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
derived from the job id; every GPU of the node left visible, rank r on cuda:LOCAL_RANK) and a
`jobs.spec.context.RankContext`, records the attempt in <run>/attempts.jsonl (rank 0), takes every stage but
prepare offline (HF_HUB_OFFLINE=1: the prepare stage fetched the weights), then calls the job. The job module is
imported here, on the node, so the launcher never imports torch; a stage whose recipe has no use for bitsandbytes
(no 4-bit base, no 8-bit optimizer) leaves it out, which spares its cold start the torch._inductor import it drags.

Preemption and time limits: a Stage is submitit-checkpointable. On SLURM's warning signal rank 0 requeues the same
stage, which resumes from the newest complete checkpoint in the run directory (the train stage does not save on
the signal: it relies on its last checkpoint, `training.save_steps` apart) and continues the same MLflow run.
"""

from __future__ import annotations

import importlib
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.common.hub import work_offline
from jobs.spec.context import RankContext
from jobs.spec.imports import leave_out, unused_modules
from jobs.spec.plan import Plan
from jobs.spec.rundir import RunDir
from jobs.spec.schema import Recipe
from jobs.spec.stages import BY_NAME

StageJob = Callable[[Recipe, Plan, RankContext], Any]
MASTER_PORTS = (20000, 60000)  # the rendezvous port is drawn from here, seeded by the job id


JOB_MODULES = {"prepare": "jobs.prepare.stage", "train": "jobs.train.stage", "export": "jobs.export.stage",
               "eval": "jobs.eval.stage"}  # each defines the stage's job function, named after the stage
JOB_FUNCTIONS = {"prepare": "prepare", "train": "train", "export": "export", "eval": "evaluate"}


def job_of(stage: str) -> StageJob:
    """The job function a rank of `stage` calls (one per name of `jobs.spec.stages.STAGES`). Imported here, on the
    node, so the launcher never imports torch."""
    if stage not in JOB_MODULES:
        raise ValueError(f"no job for stage {stage!r}")
    return getattr(importlib.import_module(JOB_MODULES[stage]), JOB_FUNCTIONS[stage])  # type: ignore[no-any-return]


@dataclass(frozen=True)
class DistributedEnvironment:
    """This task's place in the job's torch.distributed world, as exported to the environment."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int

    def variables(self) -> dict[str, str]:
        return {"RANK": str(self.rank), "LOCAL_RANK": str(self.local_rank), "WORLD_SIZE": str(self.world_size),
                "LOCAL_WORLD_SIZE": str(self.local_world_size), "MASTER_ADDR": self.master_addr,
                "MASTER_PORT": str(self.master_port)}


def export_torch_distributed() -> DistributedEnvironment:
    """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT from the job itself (SLURM's
    variables, or the local executor's, through submitit's JobEnvironment), overwriting whatever is already set:
    container hooks (enroot/pyxis's PyTorch hook) set these for a one-node world, and submitit's own export refuses
    to run over them. The port comes from the job id, the same on every task of a job.

    CUDA_VISIBLE_DEVICES stays as SLURM (or the local executor) set it, every GPU granted on the node: accelerate,
    DeepSpeed and the jobs put rank r on cuda:LOCAL_RANK. Narrowed to the rank's own GPU, seen as cuda:0, every rank
    but the first of a node would fail with "invalid device ordinal"."""
    import submitit

    job = submitit.JobEnvironment()
    env = DistributedEnvironment(
        rank=job.global_rank, local_rank=job.local_rank, world_size=job.num_tasks,
        local_world_size=job.num_tasks // job.num_nodes, master_addr=job.hostnames[0],
        master_port=random.Random(job.job_id).randint(*MASTER_PORTS),
    )
    os.environ.update(env.variables())
    return env


@dataclass(frozen=True)
class Stage:
    name: str
    run_dir: str
    recipe: Recipe
    plan: Plan
    requeue: bool = True

    def __call__(self) -> Any:
        import submitit

        env = export_torch_distributed()
        job = submitit.JobEnvironment()
        context = RankContext(
            run_dir=Path(self.run_dir), rank=env.rank, local_rank=env.local_rank, world_size=env.world_size,
            local_world_size=env.local_world_size,
            attempt=f"{job.job_id}.{os.environ.get('SLURM_RESTART_COUNT', '0')}",
        )
        node = job.hostnames[job.node] if job.node < len(job.hostnames) else job.hostname
        print(f"[{self.name}] rank {env.rank}/{env.world_size} on node {node} (job {job.job_id})", flush=True)
        if context.is_main:
            RunDir(context.run_dir).record_attempt(self.name, str(job.job_id), node)
        if not BY_NAME[self.name].online:
            work_offline()  # the prepare stage fetched what the run needs into the shared cache
        importing = time.monotonic()
        for module in unused_modules(self.recipe):
            leave_out(module)
        job = job_of(self.name)
        working = time.monotonic()
        result = job(self.recipe, self.plan, context)
        leave_process_group()
        if context.is_main:  # from the process's start: start-up and imports are the stage's time too
            total, work = time.time() - process_started(), time.monotonic() - working
            print(f"[{self.name}] done in {total:.1f} s: {total - work - (working - importing):.1f} s start-up, "
                  f"{working - importing:.1f} s imports, {work:.1f} s work", flush=True)
        # The work is done: a time-limit warning arriving now (a job that ends in its last minutes) must neither
        # requeue it nor kill the process while submitit writes the result.
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        return result

    def checkpoint(self) -> Any:
        """Requeue this stage unchanged (it resumes from what the run directory holds), unless --no-requeue."""
        import submitit

        return submitit.helpers.DelayedSubmission(self) if self.requeue else None


def process_started() -> float:
    """When this process started (seconds since the epoch), from the kernel's record of it."""
    import psutil  # the train extra has it (accelerate needs it); the launcher never calls this

    return float(psutil.Process().create_time())


def leave_process_group() -> None:
    """Every rank waits for the others, then torch.distributed is torn down in order. Left to interpreter exit,
    gloo's threads can abort a rank whose work is done ("terminate called without an active exception"), and SLURM
    marks the whole job FAILED."""
    dist = sys.modules.get("torch.distributed")  # a stage that never imported torch has nothing to tear down
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
