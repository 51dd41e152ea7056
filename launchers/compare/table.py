"""The comparison as `launch compare` prints it: aligned text (each group under its title, its runs, the base model's
row where the eval stage measured it on the same held-out data, then its pairs' delta lines), CSV (one row per run,
raw numbers) or JSON (runs, groups, deltas, plot paths, artifact path).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from jobs.spec.rundir import public_uri
from jobs.track.summary import view_url
from launchers.compare.data import EVAL_COLUMNS, Comparison, Delta, Group, RunSummary
from launchers.text import table

HEADER = ("RUN", "RECIPE", "METHOD", "STEPS", "LAST EVAL LOSS", "BEST EVAL (STEP)", "LAST TRAIN LOSS",
          "MEDIAN TOKENS/S", "COMPUTE", "PEAK MEM", "HUMANEVAL@1", "FIM EM", "FIM EDIT", "HELDOUT LOSS (VS BASE)")
LOCAL_SERVER = "http://127.0.0.1:5000"  # `launch mlflow-server` with its defaults
CSV_FIELDS = ("experiment", "run", "recipe", "method", "model", "model_name", "data", "status", "steps",
              "final_eval_loss", "best_eval_loss", "best_eval_step", "final_train_loss", "median_tokens_per_s",
              "world_size", "gpus_per_node", "nodes", "gpu_type", "restarts", "train_seconds", "gpu_hours",
              "cpu_rank_hours", "peak_memory_gb", "humaneval_pass_at_1", *EVAL_COLUMNS, "group", "parent_run_id",
              "run_dir")


def render(comparison: Comparison, fmt: str, plots: dict[str, Path] | None = None, logged: str | None = None) -> str:
    plots = plots or {}
    if fmt == "csv":
        for slug, path in plots.items():  # stdout stays CSV
            print(f"plot {slug}: {path}", file=sys.stderr)
        if logged:
            print(f"logged to {len(comparison.runs)} parent run(s) as {logged}/", file=sys.stderr)
        return to_csv(comparison)
    if fmt == "json":
        return to_json(comparison, plots, logged)
    lines = [to_text(comparison)]
    lines += [f"plot: {path}" for path in plots.values()]
    if logged:
        lines.append(f"logged to {len(comparison.runs)} parent run(s) as {logged}/")
    lines += ui_links(comparison)
    return "\n".join(lines) + "\n"


def ui_links(comparison: Comparison) -> list[str]:
    """Where MLflow's UI shows these runs' summaries side by side (the experiment's shared view, jobs.track.summary):
    on the tracking server, or on `launch mlflow-server` over a local store."""
    server = public_uri(comparison.uri)
    local = not server.startswith(("http://", "https://"))
    ids = dict.fromkeys(run.experiment_id for run in comparison.runs if run.experiment_id)
    links = [view_url(LOCAL_SERVER if local else server, experiment_id) for experiment_id in ids]
    if not links:
        return []
    where = "launch mlflow-server, then open" if local else "open"
    return [f"in MLflow's UI: {where} {' '.join(links)}"]


def to_text(comparison: Comparison) -> str:
    """Aligned columns across all groups; each group under its title, followed by its pairs' delta lines."""
    rows_of = {g.slug: [text_row(run) for run in g.runs] + base_row(g) for g in comparison.groups}
    lines = table([HEADER, *(row for rows in rows_of.values() for row in rows)])
    header, rows = lines[0], iter(lines[1:])
    out: list[str] = []
    for g in comparison.groups:
        out += [*([""] if out else []), g.title, "  " + header]
        out += ["  " + next(rows) for _ in rows_of[g.slug]]
        out += ["  " + delta_line(delta) for delta in g.deltas]
    return "\n".join(out)


def base_row(g: Group) -> list[tuple[str, ...]]:
    """The base model on the same held-out data, under the group's runs (when the eval stage measured it)."""
    base = g.base_metrics()
    if base is None:
        return []
    return [("(base)", g.runs[0].model_name, "", "", "", "", "", "", "", "", "", _num(base.get("fim_exact_match")),
             _num(base.get("fim_edit_similarity")), _num(base.get("heldout_loss")))]


def text_row(run: RunSummary) -> tuple[str, ...]:
    best = run.best_eval()
    hours = run.compute_hours
    memory = run.peak_memory_gb
    humaneval = run.humaneval
    return (run.label, run.recipe, run.method, "" if run.steps is None else str(run.steps),
            _num(run.final("eval/loss")), f"{best[1]:.4f} @{best[0]}" if best else "",
            _num(run.final("train/loss")), _num(run.median_tokens_per_s),
            f"{_hours(hours)} {run.compute_unit}-h" if hours is not None else "",
            f"{memory:.1f} GB" if memory is not None else "", f"{humaneval:.3g}" if humaneval is not None else "",
            _num(run.eval_metric("fim_exact_match")), _num(run.eval_metric("fim_edit_similarity")),
            heldout_cell(run.eval_metric("heldout_loss"), run.eval_metric("base_heldout_loss")))


def heldout_cell(loss: float | None, base: float | None) -> str:
    """The held-out loss and its change from the base's on the same data, e.g. 3.6490 (-25.4%)."""
    if loss is None or not base:
        return _num(loss)
    return f"{_num(loss)} ({loss / base - 1:+.1%})"


def delta_line(delta: Delta) -> str:
    """A pair's line under its group: eval loss difference, speed ratio, and compute ratio (same compute unit only)."""
    a_loss, b_loss = delta.a.final("eval/loss"), delta.b.final("eval/loss")
    diff = delta.eval_loss_diff
    loss = (f"eval loss {_num(a_loss)} vs {_num(b_loss)} ({diff:+.4f})" if diff is not None
            else "eval loss n/a")
    speed = delta.speed_ratio
    tokens = (f"speed {speed:.2f}× ({_num(delta.a.median_tokens_per_s)} vs "
              f"{_num(delta.b.median_tokens_per_s)} tokens/s)" if speed is not None else "speed n/a")
    compute = delta.compute_ratio
    cost = f"; compute {compute:.2f}× {delta.a.compute_unit}-hours" if compute is not None else ""
    return f"{delta.methods} ({delta.a.label} vs {delta.b.label}): {loss}; {tokens}{cost}"


def to_csv(comparison: Comparison) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for g in comparison.groups:
        for run in g.runs:
            writer.writerow({k: "" if v is None else v for k, v in run.as_dict(g.slug).items()})
    return buffer.getvalue()


def to_json(comparison: Comparison, plots: dict[str, Path], logged: str | None) -> str:
    runs = []
    for g in comparison.groups:
        for run in g.runs:
            runs.append({**run.as_dict(g.slug), "eval_metrics": run.eval_metrics})
    groups = [{"title": g.title, "slug": g.slug, "paired": g.paired, "runs": [run.label for run in g.runs],
               "deltas": [delta.as_dict() for delta in g.deltas],
               "plot": str(plots[g.slug]) if g.slug in plots else None} for g in comparison.groups]
    document = {"tracking_uri": public_uri(comparison.uri), "runs": runs, "groups": groups, "artifacts": logged}
    return json.dumps(document, indent=2) + "\n"


def _num(value: float | None) -> str:
    """Losses and other small numbers with 4 decimals; throughputs (100 and up) as integers."""
    if value is None:
        return ""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.4f}"


def _hours(value: float) -> str:
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"
