"""The parent run's summary metrics (jobs.track.summary): what the train and eval stages send for MLflow's runs table.

    .venv/bin/python -m pytest tests/unit/test_tracking_summary.py -q
"""

from __future__ import annotations

import math

from jobs.track.summary import eval_summary, train_summary

HISTORY = [
    {"loss": 2.0, "step": 5}, {"eval_loss": 1.9, "step": 10}, {"loss": 1.5, "step": 10},
    {"eval_loss": 1.4, "step": 20}, {"loss": 1.2, "step": 20}, {"eval_loss": 1.6, "step": 30},
    {"loss": 1.1, "step": 30}, {"train_runtime": 360.0, "train_loss": 1.45, "step": 30},
]


def test_train_summary_reads_last_best_and_median() -> None:
    summary = train_summary(HISTORY, [100.0, 900.0, 120.0], world_size=4, on_gpu=True, peak_memory_gb=61.5)
    assert summary == {"train_loss": 1.1, "eval_loss": 1.6, "best_eval_loss": 1.4, "tokens_per_s": 120.0,
                       "gpu_hours": 4 * 360 / 3600, "peak_memory_gb": 61.5}


def test_a_cpu_run_counts_rank_hours_and_a_short_run_sends_what_it_has() -> None:
    assert train_summary(HISTORY, [], world_size=2, on_gpu=False)["cpu_rank_hours"] == 2 * 360 / 3600
    assert train_summary([{"loss": math.nan}], [], world_size=1, on_gpu=False) == {}


def test_eval_summary_keeps_the_compared_scores() -> None:
    metrics = {"humaneval_pass_at_1": 0.25, "humaneval_pass_at_10": 0.5, "fim_exact_match": 0.1,
               "fim_py_exact_match": 0.1, "heldout_loss": 1.2, "base_heldout_loss": 1.9, "heldout_perplexity": 3.3,
               "base_fim_edit_similarity": 0.2, "base_fim_exact_match": 0.0}
    assert eval_summary(metrics) == {"humaneval_pass_at_1": 0.25, "fim_exact_match": 0.1, "heldout_loss": 1.2,
                                     "base_heldout_loss": 1.9, "base_fim_edit_similarity": 0.2}
