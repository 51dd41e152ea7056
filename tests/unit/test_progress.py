"""The train stage's tokens/s and MFU measure training alone: the time an evaluation or a checkpoint save takes
between two log events is not counted (a 15B checkpoint takes minutes).

    .venv/bin/python -m pytest tests/unit/test_progress.py -q
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import jobs.train.stage as stage
from jobs.spec.rundir import RunDir


class Logged:
    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.append(metrics)


def test_eval_and_save_time_is_not_training_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"now": 0.0}
    monkeypatch.setattr(stage.time, "perf_counter", lambda: clock["now"])
    tracker = Logged()
    progress = stage.ProgressCallback(tracker, tokens_per_step=1000, run=RunDir(tmp_path))  # type: ignore[arg-type]
    state: Any = SimpleNamespace(global_step=0, max_steps=20, is_world_process_zero=True)

    def at(seconds: float, step: int) -> Any:
        clock["now"], state.global_step = seconds, step
        return state

    progress.on_train_begin(None, at(0, 0), None)
    progress.on_log(None, at(10, 10), None, logs={"loss": 1.0})  # 10 steps in 10 s
    progress.on_evaluate(None, at(40, 10), None)  # evaluation: 30 s
    progress.on_save(None, at(100, 10), None)  # checkpoint: 60 s
    progress.on_log(None, at(110, 20), None, logs={"loss": 0.9})  # 10 more steps in 10 s
    assert [m["train/tokens_per_s"] for m in tracker.metrics] == [1000.0, 1000.0]
