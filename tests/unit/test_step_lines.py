"""The train stage's step lines (jobs.train.step_line) and how `launch` shows them (launchers.submit.progress): within
120 columns; on a terminal one status line redrawn with a bar and an ETA, elsewhere every line unchanged; submitit's
INFO lines never on the console.

    .venv/bin/python -m pytest tests/unit/test_step_lines.py -q
"""

from __future__ import annotations

import io

from jobs.train.step_line import WIDTH, step_line
from launchers.submit.progress import ProgressView

EVERYTHING = {"train/loss": 7.40512, "train/learning_rate": 0.002649, "train/grad_norm": 0.27841,
              "train/tokens_per_s": 659.7, "train/tokens_per_s_per_device": 659.7, "train/entropy": 7.598,
              "train/mean_token_accuracy": 0.03125, "train/num_tokens": 10240.0, "train/epoch": 0.5,
              "train/mfu": 0.4123}


def test_a_step_line_shows_the_numbers_that_matter_within_120_columns() -> None:
    line = step_line(10, 30, EVERYTHING)
    assert line == "step 10/30  loss 7.4051  lr 2.65e-03  grad 0.278  660 tok/s  MFU 41.2%"
    assert len(step_line(123456, 999999, {**EVERYTHING, "eval/loss": 1.0})) <= WIDTH
    assert step_line(15, 30, {"eval/loss": 7.267, "eval/runtime": 0.36}) == "step 15/30  eval loss 7.2670"
    assert step_line(30, 30, {"summary/loss": 7.361, "summary/runtime": 26.57}) == (
        "step 30/30  finished: mean train loss 7.3610 in 26.6 s")


def test_not_a_terminal_every_line_passes_but_submitits_own() -> None:
    out = io.StringIO()
    view = ProgressView(out, tty=False)
    view.feed("[train] rank 0/1 on node vm\nsubmitit INFO (2026-12-03 15:21:39,739) - Starting with Job")
    view.feed("Environment(...)\nstep 5/30  loss 7.6140\nstep 10/30  lo")
    view.close()
    assert out.getvalue() == "[train] rank 0/1 on node vm\nstep 5/30  loss 7.6140\nstep 10/30  lo\n"


def test_on_a_terminal_one_status_line_with_a_bar_and_an_eta() -> None:
    out = io.StringIO()
    now = {"t": 0.0}
    view = ProgressView(out, tty=True, clock=lambda: now["t"])
    view.feed("step 5/30  loss 7.6140\n")
    now["t"] = 10.0
    view.feed("step 10/30  loss 7.4051  660 tok/s\n")
    view.feed("step 10/30  eval loss 7.2670\n")
    view.close()
    text = out.getvalue()
    assert "\r\033[K[train] ███████░░░░░░░░░░░░░ 10/30  loss 7.4051  660 tok/s  ETA 0:40" in text  # 2 s a step
    assert "\r\033[Kstep 10/30  eval loss 7.2670\n[train] ███" in text  # printed above, the bar drawn again
    assert text.endswith("\n") and "step 10/30  loss" not in text
