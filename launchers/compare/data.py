"""The data model of `launch compare`: one launch's summary (RunSummary), two runs of different methods against each
other (Delta), the runs of one model and data (Group), the whole comparison (Comparison), and how runs are grouped
and ordered. Plain Python: store.py fills these from MLflow, table.py and plot.py render them.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from typing import Any

METHOD_ORDER = ("full", "lora", "qlora")
# HumanEval pass@1 on the eval child. MLflow refuses '@' in metric names, so the contract's eval/humaneval_pass@1
# cannot be logged as such: eval/humaneval_pass_at_1 (or _pass_1, -pass-1, /pass_at_1) is read too.
BASE_METRICS = ("heldout_loss", "fim_exact_match", "fim_edit_similarity")  # the eval stage runs the base on these
EVAL_COLUMNS = ("fim_exact_match", "fim_edit_similarity", "heldout_loss",
                *(f"base_{name}" for name in BASE_METRICS))  # eval/<name>, a column each in CSV and JSON
HUMANEVAL = re.compile(r"^eval/humaneval[/_-]pass(?:@|_at_|-at-|_|-)1$")

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
    params: dict[str, str] = field(default_factory=dict)  # the parent's: what a person compares (method, model, ...)
    label: str = ""  # name, or experiment/name when the comparison spans several experiments
    experiment_id: str = ""

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

    @property
    def data_name(self) -> str:
        """The data's file name or hub id (runs launched before this tag existed: the start of the data hash)."""
        return self.tags.get("clusterft.data_name") or self.data[:12]

    def tokens_seen(self, step: int) -> int | None:
        """Tokens trained on by `step` (the plan's tokens per optimizer step: micro batch × accumulation × world ×
        sequence length; padded tokens count, as the step time does)."""
        per_step = self.tag_int("tokens_per_step")
        return None if per_step is None else step * per_step

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
            "model": self.params.get("model") or self.tags.get("clusterft.model", ""),  # the tag: older runs
            "model_name": self.model_name, "data": self.data,
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
            **{name: self.eval_metric(name) for name in EVAL_COLUMNS},
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

    def base_metrics(self) -> dict[str, float] | None:
        """The base model's eval figures (base_heldout_loss, base_fim_*) when the group's runs that report them agree
        (one base, the same held-out data): the row every method is measured against. None otherwise."""
        reported = [{name: run.eval_metric(f"base_{name}") for name in BASE_METRICS} for run in self.runs
                    if run.eval_metric("base_heldout_loss") is not None]
        if not self.paired or not reported:
            return None
        loss = reported[0]["heldout_loss"]
        assert loss is not None
        if any(abs((r["heldout_loss"] or 0.0) - loss) > 1e-4 * max(1.0, abs(loss)) for r in reported):
            return None
        return {name: value for name, value in reported[0].items() if value is not None}

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
            groups.append(Group(f"{key[0]}, data {members[0].data_name}: {methods}",
                                slugify(f"{key[0]}-{key[1][:8]}"), members, paired=True))
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


def wall_seconds(start: int | None, end: int | None, last_metric: int | None) -> float | None:
    """The train child's start to end (ms); a run that never ended (killed, or still running): start to its last
    logged metric."""
    end = end if end is not None else last_metric
    if start is None or end is None or end < start:
        return None
    return (end - start) / 1000


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b
