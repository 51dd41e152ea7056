"""What a launch is, as tags and params of its MLflow runs: read from the recipe, the plan and the run directory.

    tags = parent_tags(run, recipe, plan)     # the parent run's clusterft.* tags (and mlflow.source.git.commit)
    tags = launch_tags(run)                   # the ones that change while the launch runs: job ids, restarts
    short, long = launch_params(recipe, plan) # the parent run's params, and the values too long to be one

Params longer than MAX_PARAM_CHARS (500: what every MLflow server accepts; MLflow 3 takes 6000) are logged as a
short pointer and written whole, redacted, to <run>/params-long.json, an artifact of the parent run.

Pure functions, no MLflow: jobs.track.tracker spools what they return. Tested through the Tracker by
tests/unit/test_tracking_redaction.py (params redacted, a long value in params-long.json) and
tests/integration/test_mlflow_tracking.py (every tag of a real launch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jobs.spec.redaction import redact_value
from jobs.spec.rundir import RunDir
from jobs.track.provenance import git_commit

MAX_PARAM_CHARS = 500
LONG_PARAMS_FILE = "params-long.json"


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists stay values."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


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
        tags.update({"clusterft.model": recipe.model.name_or_path,
                     "clusterft.gpus_per_node": str(resources.gpus_per_node),
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


def launch_params(recipe: Any, plan: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """The resolved recipe and plan as redacted dot keys: (params, with a pointer to LONG_PARAMS_FILE for each value
    longer than MAX_PARAM_CHARS; those values whole)."""
    params: dict[str, Any] = {"recipe": recipe.model_dump(mode="json")}
    if plan is not None:
        params["plan"] = {k: v for k, v in plan.as_dict().items() if k not in ("accelerate", "deepspeed")}
    flat = {key: redact_value(key, value) for key, value in flatten(params).items()}
    short: dict[str, str] = {}
    long: dict[str, Any] = {}
    for key, value in sorted(flat.items()):
        text = str(value)
        if len(text) <= MAX_PARAM_CHARS:
            short[key] = text
        else:
            long[key] = value
            short[key] = f"<{len(text)} characters: see {LONG_PARAMS_FILE}>"
    return short, long
