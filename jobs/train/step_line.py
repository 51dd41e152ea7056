"""The train stage's one line per log event, as people read it: the few numbers that matter, within 120 columns.

    step 10/30  loss 7.4051  lr 2.65e-03  grad 0.278  660 tok/s
    step 15/30  eval loss 7.2670
    step 30/30  finished: mean train loss 7.3610 in 26.6 s

Every metric still goes to MLflow (and last_metrics.json); the launcher turns these lines into a progress bar on a
terminal (launchers.submit.progress). Pure formatting: tests/unit/test_step_lines.py.
"""

from __future__ import annotations

WIDTH = 120
# metric → (label, format, label after the value)
SHOWN = (
    ("train/loss", "loss {:.4f}"),
    ("eval/loss", "eval loss {:.4f}"),
    ("train/learning_rate", "lr {:.2e}"),
    ("train/grad_norm", "grad {:.3g}"),
    ("train/tokens_per_s", "{:.0f} tok/s"),
    ("train/mfu", "MFU {:.1%}"),
)


def step_line(step: int, max_steps: int, metrics: dict[str, float]) -> str:
    """`step N/M` and the metrics of SHOWN that this event logged; the end-of-training summary as its own wording."""
    head = f"step {step}/{max_steps}  "
    if "summary/runtime" in metrics:
        loss = metrics.get("summary/loss")
        mean = f"mean train loss {loss:.4f} " if loss is not None else ""
        return (head + f"finished: {mean}in {metrics['summary/runtime']:.1f} s")[:WIDTH]
    parts = [template.format(metrics[key]) for key, template in SHOWN if key in metrics]
    return (head + "  ".join(parts))[:WIDTH]
