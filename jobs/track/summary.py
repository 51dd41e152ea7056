"""The numbers a person compares across launches, as metrics of the parent MLflow run.

MLflow's runs table shows a run's metrics as columns, and the parent runs are its rows: with these, full FT and QLoRA
sit side by side in the UI without opening a child run. The train stage sends its summary when it ends, the eval
stage its scores; a later attempt (a resume, `launch eval`) sends newer values and MLflow's table shows the latest.

    tracker.log_summary(train_summary(trainer.state.log_history, speeds, world_size=2, on_gpu=False))
    tracker.log_summary(eval_summary(record["metrics"]))

Names are short and unprefixed so the table's columns read plainly: train_loss, eval_loss, best_eval_loss,
tokens_per_s (the median of the logged windows), gpu_hours or cpu_rank_hours (world size × this attempt's training
time), peak_memory_gb (this rank's), humaneval_pass_at_1, fim_exact_match, fim_edit_similarity, heldout_loss,
base_heldout_loss, base_fim_edit_similarity.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from typing import Any

EVAL_SUMMARY = ("humaneval_pass_at_1", "fim_exact_match", "fim_edit_similarity", "heldout_loss", "base_heldout_loss",
                "base_fim_edit_similarity")
TRAIN_SUMMARY = ("train_loss", "eval_loss", "best_eval_loss", "tokens_per_s", "gpu_hours", "cpu_rank_hours",
                 "peak_memory_gb")
# MLflow's UI keeps a "shared view" (the runs table's columns) in an experiment tag and opens it from the URL:
# <server>/#/experiments/<id>/runs?viewStateShareKey=clusterft&workflowType=machine_learning shows the parents'
# summary side by side, in the UI's model-training mode (its default is the GenAI one).
VIEW_KEY = "clusterft"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"


def compare_view(params: Sequence[str]) -> str:
    """The shared view's JSON: the summary metrics and `params` (jobs.track.launch_info.VIEW_PARAMS) as columns."""
    columns = [f"metrics.`{name}`" for name in (*TRAIN_SUMMARY, *EVAL_SUMMARY[:3], "heldout_loss")]
    columns += [f"params.`{name}`" for name in params]
    return json.dumps({"selectedColumns": list(dict.fromkeys(columns)), "columnOrder": [], "runsExpanded": {}})


def view_url(server: str, experiment_id: str) -> str:
    return (f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"
            "&workflowType=machine_learning")


def train_summary(history: Sequence[dict[str, Any]], speeds: Sequence[float], world_size: int, on_gpu: bool,
                  peak_memory_gb: float | None = None) -> dict[str, float]:
    """From the Trainer's log history (every attempt's, restored with a checkpoint) and the tokens/s windows."""
    losses = [entry["loss"] for entry in history if "loss" in entry]
    evals = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    runtime = next((entry["train_runtime"] for entry in reversed(history) if "train_runtime" in entry), None)
    summary: dict[str, float] = {}
    if losses:
        summary["train_loss"] = losses[-1]
    if evals:
        summary["eval_loss"], summary["best_eval_loss"] = evals[-1], min(evals)
    if speeds:
        summary["tokens_per_s"] = statistics.median(speeds)
    if runtime is not None:
        summary["gpu_hours" if on_gpu else "cpu_rank_hours"] = world_size * runtime / 3600
    if peak_memory_gb is not None:
        summary["peak_memory_gb"] = peak_memory_gb
    return _finite(summary)


def eval_summary(metrics: dict[str, Any]) -> dict[str, float]:
    """The eval stage's scores that a comparison reads (the rest stay on the eval child)."""
    return _finite({name: metrics[name] for name in EVAL_SUMMARY if isinstance(metrics.get(name), int | float)})


def _finite(values: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in values.items() if math.isfinite(value)}
