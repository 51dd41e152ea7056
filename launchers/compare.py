"""`launch compare`: final and best metrics of several runs side by side, paired by model and data, plotted.

    launch compare                                   # the parent runs of every experiment in the store
    launch compare --experiment starcoder15b         # every parent run of one experiment
    launch compare sc-full sc-qlora --format csv     # these runs (name or experiment/name), as CSV
    launch compare sc-full sc-qlora --output cmp.png # the plot where you want it

Runs come from MLflow (the layout `jobs.track.tracker` writes): one parent run per launch, tagged clusterft.*, and one
child run per stage (tag mlflow.parentRunId, tag clusterft.stage). A RUN argument is found in the runs root like
`launch status` finds it, and its parent run id read from <run>/mlflow.json; --experiment adds every parent run of
that MLflow experiment; with neither, every parent run in the store is compared.

Runs of the same model and data (equal clusterft.model_name and clusterft.data) form a group; within a group every
two runs of different methods are paired ("full vs qlora": eval loss difference, speed and compute ratios). A run
whose model and data no other selected run shares goes to one last group, "other runs" (never paired).

Each group gets one PNG (three panels side by side: eval loss, train loss and learning rate against step; one line
per run), written to <runs root>/compare/<timestamp>-<group>.png, or to --output (with several groups:
<output stem>-<group>.png; an existing directory: the default names inside it). Every compared run's parent run
gets the table (compare.txt, compare.csv) and its group's PNG as artifacts under compare/<timestamp>/.

MLflow and matplotlib are imported inside functions only: `launch --help` stays fast.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.spec.errors import UserError, did_you_mean
from jobs.spec.rundir import public_uri, timestamp, tracking_uri
from launchers.text import table

FORMATS = ("text", "csv", "json")
METHOD_ORDER = ("full", "lora", "qlora")
PARENT_TAG = "mlflow.parentRunId"
# HumanEval pass@1 on the eval child. MLflow refuses '@' in metric names, so the contract's eval/humaneval_pass@1
# cannot be logged as such: eval/humaneval_pass_at_1 (or _pass_1, -pass-1, /pass_at_1) is read too.
HUMANEVAL = re.compile(r"^eval/humaneval[/_-]pass(?:@|_at_|-at-|_|-)1$")
# metric → (panel title, y label); one panel each, side by side, in this order
PANELS = (("eval/loss", "Eval loss", "loss"), ("train/loss", "Train loss", "loss"),
          ("train/learning_rate", "Learning rate", "learning rate"))
HISTORIES = ("eval/loss", "train/loss", "train/learning_rate", "train/tokens_per_s", "train/peak_memory_gb")
PROBE_TIMEOUT_S = 10
HEADER = ("RUN", "RECIPE", "METHOD", "STEPS", "EVAL LOSS", "BEST EVAL (STEP)", "TRAIN LOSS", "TOKENS/S", "COMPUTE",
          "PEAK MEM", "HUMANEVAL@1", "FIM EM", "HELDOUT LOSS")
CSV_FIELDS = ("experiment", "run", "recipe", "method", "model", "model_name", "data", "status", "steps",
              "final_eval_loss", "best_eval_loss", "best_eval_step", "final_train_loss", "median_tokens_per_s",
              "world_size", "gpus_per_node", "nodes", "gpu_type", "restarts", "train_seconds", "gpu_hours",
              "cpu_rank_hours", "peak_memory_gb", "humaneval_pass_at_1", "fim_exact_match", "heldout_loss",
              "base_heldout_loss", "group", "parent_run_id", "run_dir")

History = list[tuple[int, float]]  # (step, value), ascending steps, one value per step


@dataclass
class RunSummary:
    """One launch: its parent run's tags and what its train and eval child runs logged."""

    experiment: str
    name: str
    parent_id: str
    status: str
    tags: dict[str, str]
    histories: dict[str, History] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)  # the eval child's latest values
    train_seconds: float | None = None
    label: str = ""  # name, or experiment/name when the comparison spans several experiments

    @property
    def method(self) -> str:
        return self.tags.get("clusterft.method", "?")

    @property
    def recipe(self) -> str:
        return self.tags.get("clusterft.recipe", "?")

    @property
    def model_name(self) -> str:
        return self.tags.get("clusterft.model_name", "")

    @property
    def data(self) -> str:
        return self.tags.get("clusterft.data", "")

    def tag_int(self, key: str) -> int | None:
        try:
            return int(self.tags[f"clusterft.{key}"])
        except (KeyError, ValueError):
            return None

    def final(self, key: str) -> float | None:
        history = self.histories.get(key)
        return history[-1][1] if history else None

    def best_eval(self) -> tuple[int, float] | None:
        history = self.histories.get("eval/loss")
        return min(history, key=lambda point: (point[1], point[0])) if history else None

    @property
    def steps(self) -> int | None:
        history = self.histories.get("train/loss")
        return history[-1][0] if history else None

    @property
    def median_tokens_per_s(self) -> float | None:
        history = self.histories.get("train/tokens_per_s")
        return statistics.median(value for _, value in history) if history else None

    @property
    def peak_memory_gb(self) -> float | None:
        history = self.histories.get("train/peak_memory_gb")
        return max(value for _, value in history) if history else None

    @property
    def humaneval(self) -> float | None:
        return next((v for k, v in sorted(self.eval_metrics.items()) if HUMANEVAL.match(k)), None)

    def eval_metric(self, name: str) -> float | None:
        """The eval stage's eval/<name> (jobs.eval.stage), e.g. fim_exact_match, heldout_loss, base_heldout_loss."""
        return self.eval_metrics.get(f"eval/{name}")

    @property
    def compute_unit(self) -> str:
        """GPU (gpus_per_node > 0), CPU rank (a CPU run: gpus_per_node 0), or rank (not tagged)."""
        gpus = self.tag_int("gpus_per_node")
        return "rank" if gpus is None else "GPU" if gpus > 0 else "CPU rank"

    @property
    def compute_hours(self) -> float | None:
        """world size × train wall time (the train child's start to end) in hours."""
        world = self.tag_int("world_size")
        if world is None or self.train_seconds is None:
            return None
        return world * self.train_seconds / 3600

    def as_dict(self, group: str) -> dict[str, Any]:
        best = self.best_eval()
        hours = self.compute_hours
        return {
            "experiment": self.experiment, "run": self.name, "recipe": self.recipe, "method": self.method,
            "model": self.tags.get("clusterft.model", ""), "model_name": self.model_name, "data": self.data,
            "status": self.status, "steps": self.steps,
            "final_eval_loss": self.final("eval/loss"), "best_eval_loss": best[1] if best else None,
            "best_eval_step": best[0] if best else None, "final_train_loss": self.final("train/loss"),
            "median_tokens_per_s": self.median_tokens_per_s, "world_size": self.tag_int("world_size"),
            "gpus_per_node": self.tag_int("gpus_per_node"), "nodes": self.tag_int("nodes"),
            "gpu_type": self.tags.get("clusterft.gpu_type", ""), "restarts": self.tag_int("restarts"),
            "train_seconds": self.train_seconds,
            "gpu_hours": hours if self.compute_unit == "GPU" else None,
            "cpu_rank_hours": hours if self.compute_unit == "CPU rank" else None,
            "peak_memory_gb": self.peak_memory_gb, "humaneval_pass_at_1": self.humaneval,
            **{name: self.eval_metric(name) for name in ("fim_exact_match", "heldout_loss", "base_heldout_loss")},
            "group": group, "parent_run_id": self.parent_id, "run_dir": self.tags.get("clusterft.run_dir", ""),
        }


@dataclass(frozen=True)
class Delta:
    """Run a against run b (a's method first in full, lora, qlora): a − b for eval loss, a ÷ b for speed and compute."""

    a: RunSummary
    b: RunSummary

    @property
    def methods(self) -> str:
        return f"{self.a.method} vs {self.b.method}"

    @property
    def eval_loss_diff(self) -> float | None:
        a, b = self.a.final("eval/loss"), self.b.final("eval/loss")
        return None if a is None or b is None else a - b

    @property
    def speed_ratio(self) -> float | None:
        return _ratio(self.a.median_tokens_per_s, self.b.median_tokens_per_s)

    @property
    def compute_ratio(self) -> float | None:
        if self.a.compute_unit != self.b.compute_unit:
            return None
        return _ratio(self.a.compute_hours, self.b.compute_hours)

    def as_dict(self) -> dict[str, Any]:
        return {"methods": self.methods, "a": self.a.label, "b": self.b.label, "eval_loss_diff": self.eval_loss_diff,
                "speed_ratio": self.speed_ratio, "compute_ratio": self.compute_ratio}

    def line(self) -> str:
        a_loss, b_loss = self.a.final("eval/loss"), self.b.final("eval/loss")
        diff = self.eval_loss_diff
        loss = (f"eval loss {_num(a_loss)} vs {_num(b_loss)} ({diff:+.4f})" if diff is not None
                else "eval loss n/a")
        speed = self.speed_ratio
        tokens = (f"speed {speed:.2f}× ({_num(self.a.median_tokens_per_s)} vs "
                  f"{_num(self.b.median_tokens_per_s)} tokens/s)" if speed is not None else "speed n/a")
        compute = self.compute_ratio
        cost = f"; compute {compute:.2f}× {self.a.compute_unit}-hours" if compute is not None else ""
        return f"{self.methods} ({self.a.label} vs {self.b.label}): {loss}; {tokens}{cost}"


@dataclass
class Group:
    """Runs of one model and data (title names both), or the runs that share them with no other run."""

    title: str
    slug: str
    runs: list[RunSummary]
    paired: bool  # True: one model and data (deltas between its methods); False: "other runs"

    @property
    def plot_title(self) -> str:
        if self.paired:
            return self.title
        if len(self.runs) == 1:
            return f"{self.runs[0].label} ({self.runs[0].recipe})"
        return f"{self.title} (no two of the same model and data)"

    @property
    def deltas(self) -> list[Delta]:
        if not self.paired:
            return []
        return [Delta(a, b) for i, a in enumerate(self.runs) for b in self.runs[i + 1:] if a.method != b.method]


@dataclass
class Comparison:
    uri: str
    runs: list[RunSummary]
    groups: list[Group]
    client: Any = None  # MlflowClient: logs the artifacts


# ---------------------------------------------------------------- the command


def compare(root: Path, refs: Sequence[str] = (), experiment: str | None = None, fmt: str = "text",
            output: str | Path | None = None, write: bool = True) -> str:
    """What `launch compare` prints on stdout. With `write`, also the PNGs and the artifacts on each parent run."""
    if fmt not in FORMATS:
        raise UserError(f"flag --format {fmt}: {did_you_mean(fmt, FORMATS)}")
    comparison = collect(root, refs, experiment)
    stamp = timestamp()
    plots: dict[str, Path] = {}
    logged = None
    if write:
        plots = write_plots(comparison, plot_paths(comparison.groups, root, output, stamp))
        logged = log_artifacts(comparison, plots, f"compare/{stamp}")
    return render(comparison, fmt, plots, logged)


def collect(root: Path, refs: Sequence[str] = (), experiment: str | None = None) -> Comparison:
    """The selected parent runs with their children's metrics, grouped; UserError when there is nothing to compare."""
    client, uri = connect(root)
    with mlflow_errors(uri):
        store = Store(client)
        parents = select_parents(store, root, uri, refs, experiment)
        runs = [summarise(store, parent) for parent in parents]
    several = len({run.experiment for run in runs}) > 1
    for run in runs:
        run.label = f"{run.experiment}/{run.name}" if several else run.name
    return Comparison(uri, runs, group(runs), client)


# ---------------------------------------------------------------- MLflow


def connect(root: Path) -> tuple[Any, str]:
    """An MlflowClient on the runs root's store; UserError when there is no store or the server does not answer."""
    uri = tracking_uri(root)
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as err:
        raise UserError(f"launch compare needs MLflow and matplotlib in this environment ({err})") from err
    if uri.startswith("sqlite:"):
        path = sqlite_path(uri)
        if path is not None and not path.exists():
            why = ("$MLFLOW_TRACKING_URI names a file that does not exist" if os.environ.get("MLFLOW_TRACKING_URI")
                   else f"nothing has been tracked under {root} yet")
            raise UserError(f"no MLflow store at {path}: {why}")
    elif uri.startswith(("http://", "https://")):
        probe(uri)
    with mlflow_errors(uri):  # a sqlite store is opened (and its schema checked) right here
        return MlflowClient(tracking_uri=uri), uri


def sqlite_path(uri: str) -> Path | None:
    """sqlite:////abs/mlflow.db → /abs/mlflow.db; None for an in-memory store."""
    rest = uri.split("://", 1)[1] if "://" in uri else ""
    rest = rest.split("?", 1)[0]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    return Path(rest[1:])


def probe(uri: str) -> None:
    """One quick request (MLflow's own client retries for minutes): any HTTP answer means the server is there."""
    try:
        with urllib.request.urlopen(f"{public_uri(uri).rstrip('/')}/health", timeout=PROBE_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        return  # it answered (401, 404, ...): reachable; MLflow's own calls say what is wrong
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"MLflow tracking server {public_uri(uri)} is unreachable: {reason}") from err


@contextmanager
def mlflow_errors(uri: str) -> Iterator[None]:
    """MLflow's failures (a server error, a file that is not an MLflow store) as one line."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError  # MLflow's own dependency: its sqlite store

    try:
        yield
    except (MlflowException, SQLAlchemyError) as err:
        text = err.message if isinstance(err, MlflowException) else str(err).split("\n", 1)[0]
        message = " ".join(str(text).split())
        raise UserError(f"MLflow at {public_uri(uri)}: {message[:300]}") from err


class Store:
    """Read access with caches: experiment names, and every run of an experiment (parents and their children)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._names: dict[str, str] = {}
        self._runs: dict[str, list[Any]] = {}

    def experiment_name(self, experiment_id: str) -> str:
        if experiment_id not in self._names:
            self._names[experiment_id] = self.client.get_experiment(experiment_id).name
        return self._names[experiment_id]

    def runs(self, experiment_id: str) -> list[Any]:
        if experiment_id not in self._runs:
            found: list[Any] = []
            token = None
            while True:
                page = self.client.search_runs([experiment_id], max_results=1000, page_token=token,
                                               order_by=["attributes.start_time ASC"])
                found.extend(page)
                token = page.token
                if not token:
                    break
            self._runs[experiment_id] = found
        return self._runs[experiment_id]

    def parents(self, experiment_id: str) -> list[Any]:
        return [r for r in self.runs(experiment_id) if PARENT_TAG not in r.data.tags
                and "clusterft.recipe" in r.data.tags]

    def children(self, parent: Any) -> dict[str, Any]:
        """stage → child run (the newest when a stage has several)."""
        stages: dict[str, Any] = {}
        for run in self.runs(parent.info.experiment_id):
            if run.data.tags.get(PARENT_TAG) == parent.info.run_id and "clusterft.stage" in run.data.tags:
                stages[run.data.tags["clusterft.stage"]] = run  # ascending start time: the newest wins
        return stages

    def history(self, run_id: str, key: str) -> tuple[History, int | None]:
        """(step, value) points, one per step (a step logged twice: the later value), and the newest timestamp."""
        by_step: dict[int, tuple[int, float]] = {}
        for metric in self.client.get_metric_history(run_id, key):
            if not math.isfinite(metric.value):
                continue
            seen = by_step.get(metric.step)
            if seen is None or metric.timestamp >= seen[0]:
                by_step[metric.step] = (metric.timestamp, metric.value)
        newest = max((stamp for stamp, _ in by_step.values()), default=None)
        return [(step, value) for step, (_, value) in sorted(by_step.items())], newest


def select_parents(store: Store, root: Path, uri: str, refs: Sequence[str], experiment: str | None) -> list[Any]:
    """RUN arguments (from their mlflow.json), plus every parent run of --experiment; with neither, every parent run."""
    selected: dict[str, Any] = {}
    for ref in refs:
        parent = parent_of_ref(store, root, uri, ref)
        selected.setdefault(parent.info.run_id, parent)
    if experiment is not None:
        found = store.client.get_experiment_by_name(experiment)
        if found is None:
            names = [e.name for e in search_experiments(store.client)]
            hint = did_you_mean(experiment, names) if names else "the store has no experiments"
            raise UserError(f"flag --experiment {experiment}: no such MLflow experiment at {public_uri(uri)}: {hint}")
        parents = store.parents(found.experiment_id)
        if not parents and not refs:
            raise UserError(f"nothing to compare: experiment {experiment} has no clusterft runs at {public_uri(uri)}")
        for parent in parents:
            selected.setdefault(parent.info.run_id, parent)
    if not refs and experiment is None:
        for found in search_experiments(store.client):
            for parent in store.parents(found.experiment_id):
                selected.setdefault(parent.info.run_id, parent)
        if not selected:
            raise UserError(f"nothing to compare: no clusterft runs at {public_uri(uri)}")
    return sorted(selected.values(), key=lambda run: (run.info.start_time or 0, run.info.run_name or ""))


def search_experiments(client: Any) -> list[Any]:
    found: list[Any] = []
    token = None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def parent_of_ref(store: Store, root: Path, uri: str, ref: str) -> Any:
    """The parent MLflow run of a run directory named by `ref` (name or experiment/name), from its mlflow.json."""
    from mlflow.exceptions import MlflowException

    from launchers.runs import find_run

    run = find_run(root, ref)
    ids = run.read_json(run.mlflow_file)
    if not ids:
        raise UserError(f"run {run.experiment}/{run.name} has no mlflow.json: it has not started tracking yet")
    if "parent" not in ids:
        raise UserError(f"run {run.experiment}/{run.name}: mlflow.json has no parent run id (stages: "
                        f"{', '.join(k for k in ids if k != 'tracking_uri') or 'none'}); it predates launch compare")
    try:
        return store.client.get_run(ids["parent"])
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        where = ids.get("tracking_uri")
        hint = (f"; it was tracked at {where}: set MLFLOW_TRACKING_URI" if where and where != public_uri(uri)
                else "")
        raise UserError(f"run {run.experiment}/{run.name}: MLflow run {ids['parent']} not found at "
                        f"{public_uri(uri)}{hint}") from err


def summarise(store: Store, parent: Any) -> RunSummary:
    tags = dict(parent.data.tags)
    summary = RunSummary(store.experiment_name(parent.info.experiment_id), parent.info.run_name or parent.info.run_id,
                         parent.info.run_id, parent.info.status, tags)
    children = store.children(parent)
    train = children.get("train")
    if train is not None:
        newest: list[int] = []
        for key in HISTORIES:
            if key in train.data.metrics:
                summary.histories[key], stamp = store.history(train.info.run_id, key)
                newest += [stamp] if stamp is not None else []
        summary.train_seconds = wall_seconds(train.info.start_time, train.info.end_time, max(newest, default=None))
    evaluation = children.get("eval")
    if evaluation is not None:
        summary.eval_metrics = {k: v for k, v in evaluation.data.metrics.items() if math.isfinite(v)}
    return summary


def wall_seconds(start: int | None, end: int | None, last_metric: int | None) -> float | None:
    """The train child's start to end (ms); a run that never ended (killed, or still running): start to its last
    logged metric."""
    end = end if end is not None else last_metric
    if start is None or end is None or end < start:
        return None
    return (end - start) / 1000


# ---------------------------------------------------------------- groups


def group(runs: list[RunSummary]) -> list[Group]:
    """Runs with equal model_name and data together (in order of first appearance); lone runs last, as "other runs"."""
    keyed: dict[tuple[str, str], list[RunSummary]] = {}
    for run in runs:
        keyed.setdefault(group_key(run), []).append(run)
    groups: list[Group] = []
    others: list[RunSummary] = []
    for run in runs:
        key = group_key(run)
        members = keyed.pop(key, None)  # a group is emitted at its first run; its other runs find nothing here
        if members is not None and len(members) < 2:
            others.append(run)
        elif members is not None:
            members.sort(key=method_rank)
            methods = " vs ".join(dict.fromkeys(m.method for m in members))
            groups.append(Group(f"{key[0]}, data {key[1][:12]}: {methods}", slugify(f"{key[0]}-{key[1][:8]}"),
                                members, paired=True))
    if others:
        slug = slugify(others[0].name) if len(others) == 1 else "other"
        groups.append(Group("other runs" if groups else "runs", slug, others, paired=False))
    seen: dict[str, int] = {}
    for g in groups:  # two model names that slugify alike still get two files
        seen[g.slug] = seen.get(g.slug, 0) + 1
        if seen[g.slug] > 1:
            g.slug = f"{g.slug}-{seen[g.slug]}"
    return groups


def group_key(run: RunSummary) -> tuple[str, str]:
    """(model_name, data); a run missing either tag is alone under its own key."""
    return (run.model_name, run.data) if run.model_name and run.data else ("", run.parent_id)


def method_rank(run: RunSummary) -> tuple[int, str]:
    rank = METHOD_ORDER.index(run.method) if run.method in METHOD_ORDER else len(METHOD_ORDER)
    return rank, run.method


def slugify(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "runs"


# ---------------------------------------------------------------- output


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
    return "\n".join(lines) + "\n"


def to_text(comparison: Comparison) -> str:
    """Aligned columns across all groups; each group under its title, followed by its pairs' delta lines."""
    grouped = [(g, run) for g in comparison.groups for run in g.runs]
    lines = table([HEADER, *(text_row(run) for _, run in grouped)])
    header, rows = lines[0], iter(lines[1:])
    out: list[str] = []
    for g in comparison.groups:
        out += [*([""] if out else []), g.title, "  " + header]
        out += ["  " + next(rows) for _ in g.runs]
        out += ["  " + delta.line() for delta in g.deltas]
    return "\n".join(out)


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
            _num(run.eval_metric("fim_exact_match")), _num(run.eval_metric("heldout_loss")))


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


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


# ---------------------------------------------------------------- plots


def plot_paths(groups: list[Group], root: Path, output: str | Path | None, stamp: str) -> dict[str, Path]:
    """slug → PNG path: <runs root>/compare/<stamp>-<slug>.png; --output FILE (several groups: FILE-<slug>.png);
    --output DIR (an existing directory, or one ending in /): the default names inside it."""
    if output is None or Path(output).is_dir() or str(output).endswith(("/", "\\")):
        folder = root / "compare" if output is None else Path(output)
        return {g.slug: folder / f"{stamp}-{g.slug}.png" for g in groups}
    path = Path(output)
    if len(groups) == 1:
        return {groups[0].slug: path}
    return {g.slug: path.with_name(f"{path.stem}-{g.slug}{path.suffix or '.png'}") for g in groups}


def write_plots(comparison: Comparison, paths: dict[str, Path]) -> dict[str, Path]:
    """One PNG per group that has anything to plot; returns slug → path of those written."""
    written: dict[str, Path] = {}
    for g in comparison.groups:
        if not any(run.histories.get(key) for run in g.runs for key, _, _ in PANELS):
            continue
        path = paths[g.slug]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_png(figure(g), path)
        except OSError as err:
            raise UserError(f"cannot write the plot {path}: {err.strerror or err}") from err
        written[g.slug] = path
    return written


def figure(g: Group) -> Any:
    """The group's figure: three panels side by side (eval loss, train loss, learning rate against step), one line
    per run (colour per run, line style per method; a star on each run's best eval loss), one legend under the
    panels. Learning rates that differ by more than 10× (full FT vs QLoRA) get a log axis. Headless: no pyplot."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    styles = {"full": "-", "lora": "--", "qlora": "-."}
    fig = Figure(figsize=(16, 5.2), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(PANELS), sharex=True)
    colours = [f"C{i % 10}" for i in range(len(g.runs))]
    for ax, (key, title, ylabel) in zip(axes, PANELS):
        drawn = []
        for run, colour in zip(g.runs, colours):
            history = run.histories.get(key)
            if not history:
                continue
            steps, values = zip(*history)
            sparse = key == "eval/loss" or len(history) <= 20
            ax.plot(steps, values, color=colour, linestyle=styles.get(run.method, ":"), linewidth=1.8,
                    marker="o" if sparse else None, markersize=4, label=f"{run.label} ({run.method})")
            drawn.append(max(values))
            best = run.best_eval() if key == "eval/loss" else None
            if best is not None and len(history) > 1:
                ax.plot([best[0]], [best[1]], marker="*", markersize=13, color=colour, markeredgecolor="white",
                        linestyle="none", zorder=5)
        ax.set_title(title, fontsize=12)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if key == "train/learning_rate":
            peaks = [peak for peak in drawn if peak > 0]
            if peaks and max(peaks) > 10 * min(peaks):
                ax.set_yscale("log")
                ax.set_ylim(min(peaks) / 100, max(peaks) * 2)  # the schedule's tail to 0 would take the axis
                ax.set_title(f"{title} (log scale)", fontsize=12)
            else:
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if not drawn:
            ax.text(0.5, 0.5, f"no {key} logged", transform=ax.transAxes, ha="center", va="center", color="0.5")
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
                   ncols=min(len(handles), 4), frameon=False, fontsize=10)
    fig.suptitle(g.plot_title, fontsize=13, fontweight="bold")
    return fig


def save_png(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, format="png")


# ---------------------------------------------------------------- artifacts


def log_artifacts(comparison: Comparison, plots: dict[str, Path], artifact_path: str) -> str | None:
    """compare.txt and compare.csv to every compared parent run, and its group's PNG; a failure is a warning (the
    comparison itself is printed anyway). Returns the artifact path, or None when nothing could be logged."""
    with tempfile.TemporaryDirectory(prefix="clusterft-compare-") as folder:
        tables = [Path(folder) / "compare.txt", Path(folder) / "compare.csv"]
        tables[0].write_text(to_text(comparison) + "\n", encoding="utf-8")
        tables[1].write_text(to_csv(comparison), encoding="utf-8")
        try:
            for g in comparison.groups:
                files = [*tables, *([plots[g.slug]] if g.slug in plots else [])]
                for run in g.runs:
                    for path in files:
                        comparison.client.log_artifact(run.parent_id, str(path), artifact_path=artifact_path)
        except Exception as err:  # noqa: BLE001 - any artifact store's failure (S3, a server, a disk): a warning
            message = " ".join(str(err).split())[:300]
            print(f"warning: could not log the comparison to the parent runs: {message}", file=sys.stderr)
            return None
    return artifact_path
