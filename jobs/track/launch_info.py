"""What a launch is, as tags and params of its MLflow runs: read from the recipe, the plan and the run directory.

    tags = parent_tags(run, recipe, plan)     # the parent run's clusterft.* tags (and mlflow.source.git.commit)
    tags = launch_tags(run)                   # the ones that change while the launch runs: job ids, restarts
    params = launch_params(recipe, plan)      # the parent run's params: what a person compares (method, lr, ...)

Pure functions, no MLflow: jobs.track.tracker spools what they return. Tested through the Tracker by
tests/unit/test_tracking_redaction.py (nothing secret reaches the store) and tests/integration/test_mlflow_tracking.py
(every tag and param of a real launch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jobs.spec.redaction import redact_value
from jobs.spec.rundir import RunDir
from jobs.track.provenance import git_commit


def recipe_tags(recipe: Any) -> dict[str, str]:
    if recipe is None:
        return {}
    return {"clusterft.recipe": recipe.name, "clusterft.method": recipe.method.kind,
            "clusterft.model_name": recipe.model_name, "clusterft.data_name": data_name(recipe.data.source)}


def data_name(source: str) -> str:
    """How a person names the data: a local file or directory by its name, a hub dataset by its id."""
    return Path(source).name if Path(source).is_absolute() else source


def parent_tags(run: RunDir, recipe: Any, plan: Any) -> dict[str, str]:
    tags = {**recipe_tags(recipe), "clusterft.run_dir": str(run.path), "clusterft.git_commit": git_commit()}
    tags["mlflow.source.git.commit"] = tags["clusterft.git_commit"]
    if recipe is not None:
        resources = recipe.resources
        tags.update({"clusterft.gpus_per_node": str(resources.gpus_per_node),
                     "clusterft.gpu_type": resources.gpu_type or "none"})
    if plan is not None:
        tags.update({"clusterft.nodes": str(plan.nodes), "clusterft.world_size": str(plan.world_size),
                     "clusterft.tokens_per_step": str(plan.tokens_per_step)})
    return {**tags, **launch_tags(run)}


def launch_tags(run: RunDir) -> dict[str, str]:
    """What changes while a launch runs: the job ids (stages are submitted, requeued), the restarts."""
    launch = run.read_json(run.launch_file)
    return {"clusterft.container": str(launch.get("container") or "none"),
            "clusterft.executor": str(launch.get("executor") or "unknown"),
            "clusterft.slurm_job_ids": json.dumps(launch.get("jobs", {}), sort_keys=True),
            "clusterft.restarts": str(requeues(run.path))}


def requeues(run_dir: Path) -> int:
    """Requeues so far over every stage (attempts.jsonl: one line per start of a stage)."""
    counts: dict[str, int] = {}
    for attempt in RunDir(run_dir).attempts():
        counts[attempt.get("stage", "")] = counts.get(attempt.get("stage", ""), 0) + 1
    return sum(max(0, n - 1) for n in counts.values())


VIEW_PARAMS = ("method", "learning_rate", "lora_r", "quantization", "global_batch", "seq_length", "nodes_x_ranks",
               "backend", "planned_verdict")  # launch_params' names shown in MLflow's runs table (summary.compare_view)


def launch_params(recipe: Any, plan: Any) -> dict[str, str]:
    """The params a person compares between launches, under short names (MLflow's runs table shows them as
    columns); the whole recipe and plan are the parent's recipe.yaml and plan.json artifacts."""
    training, lora, quantization = recipe.training, recipe.method.lora, recipe.method.quantization
    params: dict[str, Any] = {
        "method": recipe.method.kind, "model": recipe.model.name_or_path, "backend": recipe.distributed.backend,
        "learning_rate": training.learning_rate, "lr_scheduler": training.lr_scheduler,
        "steps": training.max_steps if training.max_steps else f"{training.epochs} epochs",
        "micro_batch": training.per_device_batch_size, "seq_length": recipe.data.seq_length,
        "gradient_checkpointing": training.gradient_checkpointing,
    }
    if lora is not None:
        params.update(lora_r=lora.r, lora_alpha=lora.alpha)
    if quantization is not None:
        params["quantization"] = f"4-bit {quantization.quant_type}" + (" double" if quantization.double_quant else "")
    if plan is not None:
        params.update(global_batch=plan.global_batch_size, nodes_x_ranks=f"{plan.nodes}x{plan.ranks_per_node}",
                      precision=plan.precision)
    estimate = getattr(plan, "estimate", None) or {}
    if estimate:  # the planner's figures (launch plan): what was expected, next to what happened
        params.update(planned_verdict=estimate["verdict"], planned_gb_per_gpu=estimate["per_gpu_gb"]["total"],
                      planned_gpu_hours=estimate.get("gpu_hours"))
    return {key: str(redact_value(key, value)) for key, value in params.items() if value is not None}
