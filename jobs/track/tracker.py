"""MLflow tracking for a launch: one parent run, one child run per stage, written by global rank 0 only.

Shape. The parent run (named after the run directory) holds what the launch is and how it went: the params a person
compares (method, learning rate, LoRA r/alpha, quantization, batch, sequence length, nodes×ranks, back end, the
planner's verdict: jobs.track.launch_info), summary metrics (train and eval loss, tokens/s, GPU-hours, peak memory,
HumanEval and FIM scores: jobs.track.summary), tags `clusterft.*` (recipe, method, model_name, data, data_name,
run_dir, git_commit, nodes, gpus_per_node, world_size, tokens_per_step, gpu_type, container, slurm_job_ids,
restarts, executor) and the files recipe.yaml (the whole recipe), plan.json, launch.json and the sbatch scripts.
Each stage (prepare, train, export, eval) is a child run (`<stage> · <name>`: the stage first, where MLflow's table
truncates, tagged mlflow.parentRunId, clusterft.stage and the recipe tags) with its metrics and, at its end, its
rank-0 logs and — for LoRA/QLoRA training — the adapter. An experiment the tracker creates is marked a fine-tuning
experiment (tag mlflow.experimentKind), so MLflow 3's UI opens it on its runs and charts, not its GenAI pages; every
experiment it logs to gets the shared view of the parents' summary columns (jobs.track.summary: VIEW_TAG). Run ids
live in <run>/mlflow.json ({"parent": id, "train": id, ..., "tracking_uri": uri without credentials}); whichever
stage starts first creates the parent, a requeued or relaunched stage continues its own child run.

Outages. Every call is first a line in <run>/mlflow-spool/ (see jobs.track.spool): the training loop never touches the
network. A background thread sends the spool; at the stage's end `finish()` waits at most
$CLUSTERFT_TRACKING_FLUSH_S seconds (default 30) for it to drain and leaves the rest for the next stage or
`launch sync RUN`, which replay it with the original steps and timestamps, never twice. A requeued train stage skips
the steps it logged before (those replayed from its last checkpoint): the highest step of each metric, and of
train/loss for all of them, is read from the local spool, not asked of the server.

Secrets. Params, tags and the files sent are redacted first (jobs.spec.redaction): keys named like secrets and values
shaped like tokens become "***redacted***". The environment is never logged.

Metrics of the prepare child: its report (data/*, the counts that are not zero). Of the train child: what the trainer
logs (train/loss, train/learning_rate, train/grad_norm, train/tokens_per_s, eval/loss, summary/*), system metrics
(system/*, see jobs.track.system) every $CLUSTERFT_SYSTEM_METRICS_S seconds (default 15; 0 turns them off) and
train/peak_memory_gb at the end.

Models. The final adapter of a LoRA/QLoRA run is an artifact (small). A full fine-tune is never uploaded by default:
the train child gets tags clusterft.final_dir, clusterft.final_bytes (every file in final/) and
clusterft.final_sha256 (sha256 of `sha256sum *.safetensors` in final/, computed streaming) and a manifest artifact
with each file's size and sha256 (jobs.track.provenance); CLUSTERFT_LOG_MODEL_ARTIFACTS=1 uploads final/ too.
Checkpoints never are.

Tracking never drives control flow: a failure is reported once (on stdout, with the stage's output) and the
stage goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from jobs.spec.context import RankContext
from jobs.spec.redaction import redact_text, redact_value
from jobs.spec.rundir import RunDir, public_uri, tracking_uri, write_atomic
from jobs.spec.stages import TRACKED_STAGES
from jobs.track.launch_info import launch_params, launch_tags, parent_tags, recipe_tags
from jobs.track.provenance import is_text, model_manifest, write_redacted
from jobs.track.sender import Sender, fast_http
from jobs.track.sender_thread import SenderThread
from jobs.track.spool import Spool, now_ms
from jobs.track.system import SystemMonitor

__all__ = ["Tracker"]

FLUSH_ENV, FLUSH_DEFAULT_S = "CLUSTERFT_TRACKING_FLUSH_S", 30.0
KILLED_FLUSH_S = 5.0  # a requeued or cancelled stage has little time left: the next attempt sends the rest
SYSTEM_ENV, SYSTEM_DEFAULT_S = "CLUSTERFT_SYSTEM_METRICS_S", 15.0
MODEL_ARTIFACTS_ENV = "CLUSTERFT_LOG_MODEL_ARTIFACTS"


class Tracker:
    """Tracking for one stage of one run; a no-op on every rank but global rank 0.

        tracker = Tracker(context, "train", recipe, plan)
        tracker.start()                        # parent (if first) and child runs, params, tags, launch files
        tracker.set_data(cache_key)            # clusterft.data on the parent
        tracker.log_metrics({"train/loss": 1.2}, step=10)
        tracker.log_final(run.final, "lora")   # the adapter, or a full model's size and sha256
        tracker.log_summary({"train_loss": 0.9})  # metrics of the parent run (jobs.track.summary)
        tracker.finish("FINISHED")             # logs, end status, bounded flush

    or `with Tracker(context, "export", recipe, plan) as tracker: ...` (FINISHED, FAILED, or KILLED on exit).
    """

    def __init__(self, context: RankContext, stage: str, recipe: Any = None, plan: Any = None, *,
                 system_metrics: bool | None = None) -> None:
        self.enabled = context.is_main
        self.run = RunDir(context.run_dir)
        self.stage = stage
        self.recipe = recipe
        self.plan = plan
        self.system_metrics = stage == "train" if system_metrics is None else system_metrics
        self.spool = Spool(self.run.path)
        self.uri = tracking_uri(self.run.root)
        self.logged_through = -1  # a resumed stage skips steps it already logged (no duplicate points)
        self.current_step = 0
        self._last_steps: dict[str, int] = {}
        self._sender: SenderThread | None = None
        self._monitor: SystemMonitor | None = None
        self._env = contextlib.ExitStack()
        self._warned = False
        self._started = False
        self._finished = False

    # -- public API ---------------------------------------------------------------------------------------------

    @property
    def run_id(self) -> str | None:
        """This stage's MLflow run id, once the run exists on the server (None while its creation is spooled)."""
        return self.run.read_json(self.run.mlflow_file).get(self.stage)

    def start(self) -> None:
        if self.enabled and not self._started:
            self._started = True
            self._guard(self._start)

    def set_data(self, key: str) -> None:
        """The data fingerprint on the parent: the prepared cache key (jobs.prepare.stage.cache_key: source content,
        tokenizer, data settings, seed)."""
        self._append("parent", {"op": "tags", "run": "parent", "tags": {"clusterft.data": str(key)}})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log at `step`; after a requeue, steps the stage already logged (replayed from a checkpoint) are skipped."""
        if not self._active() or step <= self.logged_through:
            return
        values = {key: float(value) for key, value in metrics.items()
                  if isinstance(value, int | float) and step > self._last_steps.get(key, -1)}
        if values:
            self._log_values(values, step)

    def log_summary(self, values: dict[str, float]) -> None:
        """Summary metrics on the parent run (jobs.track.summary): the runs table's columns in MLflow's UI."""
        if self._active() and values:
            self._append("parent", {"op": "metrics", "run": "parent", "step": 0, "time": now_ms(),
                                    "values": {key: float(value) for key, value in values.items()}})

    def log_data_report(self, report: dict[str, Any]) -> None:
        """The prepare report as data/<split>/<number> metrics at step 0; zero counts stay in the report only (a
        chart per zero buries the numbers that matter)."""
        self.log_metrics({f"data/{split}/{key}": float(value) for split, numbers in report.get("splits", {}).items()
                          for key, value in numbers.items() if isinstance(value, int | float) and value}, step=0)

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tags on this stage's run (redacted)."""
        if self._active() and tags:
            self._append(self.stage, {"op": "tags", "run": self.stage, "tags": _clean_tags(tags)})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """A file on this stage's run; text files are sent as a redacted copy."""
        if self._active():
            self._guard(self._log_file, self.stage, Path(path), artifact_path or "")

    def log_final(self, final: Path, kind: str) -> None:
        """The final model of the train stage: LoRA/QLoRA adapters are uploaded; a full model is described (path,
        bytes, sha256) unless CLUSTERFT_LOG_MODEL_ARTIFACTS=1."""
        if self._active():
            self._guard(self._log_final, Path(final), kind)

    def log_export(self, version_dir: Path, record: dict[str, Any]) -> None:
        """An export version (jobs.export.stage): on the parent run, where it is and the merged model's (else the
        adapter's) bytes and sha256; on this stage's run, export.json and the model cards."""
        if not self._active():
            return
        main = record.get("model") or record.get("adapter") or {}
        self._append("parent", {"op": "tags", "run": "parent", "tags": _clean_tags({
            "clusterft.export.path": str(version_dir), "clusterft.export.version": str(record["version"]),
            "clusterft.export.bytes": str(main.get("bytes", "")), "clusterft.export.sha256": main.get("sha256", "")})})
        self.set_tags({"clusterft.export.path": str(version_dir)})
        self.log_artifact(version_dir / "export.json")
        for name in ("model", "adapter"):
            if (version_dir / name / "README.md").is_file():
                self.log_artifact(version_dir / name / "README.md", f"model-card/{name}")

    def finish(self, status: str = "FINISHED") -> None:
        """End this stage's run (and the parent's, after the launch's last stage or a failure), then wait — at most
        $CLUSTERFT_TRACKING_FLUSH_S seconds — for the spool to reach the server."""
        if not self._active():
            return
        self._finished = True
        exc = sys.exc_info()[0]
        if status != "FINISHED" and exc is not None and issubclass(exc, SystemExit | KeyboardInterrupt):
            status = "KILLED"  # requeued on a time limit or preemption, or cancelled: not a failure of the run
        self._guard(self._finish, status)

    def __enter__(self) -> Tracker:
        self.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finish("FINISHED")
        else:
            self.finish("KILLED" if issubclass(exc_type, SystemExit | KeyboardInterrupt) else "FAILED")

    # -- start --------------------------------------------------------------------------------------------------

    def _start(self) -> None:
        self._env.enter_context(fast_http())
        public = public_uri(self.uri)
        meta = self.spool.meta()
        if not meta.get("tracking_uri"):
            self.spool.set_meta({"tracking_uri": public})
        ids = self.run.read_json(self.run.mlflow_file)
        recorded = ids.get("tracking_uri") or meta.get("tracking_uri")
        if recorded and recorded != public:
            self._say(f"[tracking] this run was tracked at {recorded}, MLFLOW_TRACKING_URI now says {public}: "
                      f"its run ids ({self.run.path / 'mlflow.json'}) may not exist there")
        if ids.get("parent") or self.spool.created("parent"):
            self._append("parent", {"op": "status", "run": "parent", "status": "RUNNING"})
            self._append("parent", {"op": "tags", "run": "parent", "tags": _clean_tags(launch_tags(self.run))})
        else:
            self._append("parent", {"op": "create", "run": "parent", "experiment": self.run.experiment,
                                    "name": self.run.name, "key": uuid.uuid4().hex, "time": now_ms(),
                                    "tags": _clean_tags(parent_tags(self.run, self.recipe, self.plan))})
            self._log_params()
        self._log_launch_files()
        if ids.get(self.stage) or self.spool.created(self.stage):
            self._last_steps = self.spool.last_steps(self.stage)
            self.logged_through = self._last_steps.get("train/loss", -1)
            self.current_step = max(self._last_steps.values(), default=0)
            self._append(self.stage, {"op": "status", "run": self.stage, "status": "RUNNING"})
            self._append(self.stage, {"op": "tags", "run": self.stage,
                                      "tags": {"clusterft.restarts": str(self._stage_restarts())}})
            if self.logged_through >= 0:
                print(f"[tracking] {self.stage} resumes its MLflow run after step {self.logged_through}",
                      flush=True)
        else:
            tags = {**recipe_tags(self.recipe), "clusterft.stage": self.stage,
                    "clusterft.restarts": str(self._stage_restarts())}
            self._append(self.stage, {"op": "create", "run": self.stage, "parent": "parent",
                                      "experiment": self.run.experiment, "name": f"{self.stage} · {self.run.name}",
                                      "key": uuid.uuid4().hex, "time": now_ms(), "tags": _clean_tags(tags)})
        self._sender = SenderThread(Sender(self.run.path, self.uri), say=self._say)
        self._sender.start()
        interval = _env_float(SYSTEM_ENV, SYSTEM_DEFAULT_S)
        if self.system_metrics and interval > 0:
            self._monitor = SystemMonitor(self, interval)
            self._monitor.start()

    def _last_tracked_stage(self) -> bool:
        """No later stage of this launch will log to MLflow: the parent run ends with this one. (A later stage that
        does track reopens the parent — RUNNING at its start — and ends it again.)"""
        stages = list(self.run.read_json(self.run.launch_file).get("stages") or [self.stage])
        later = stages[stages.index(self.stage) + 1:] if self.stage in stages else []
        return not any(stage in TRACKED_STAGES for stage in later)

    def _stage_restarts(self) -> int:
        return max(0, sum(a.get("stage") == self.stage for a in self.run.attempts()) - 1)

    def _log_params(self) -> None:
        if self.recipe is None:
            return
        self._append("parent", {"op": "params", "run": "parent", "params": launch_params(self.recipe, self.plan)})

    def _log_launch_files(self) -> None:
        """recipe.yaml, plan.json, launch.json and the sbatch scripts on the parent (redacted copies; refreshed by
        every stage, as launch.json gains job ids)."""
        for path in (self.run.recipe_file, self.run.plan_file, self.run.launch_file):
            if path.exists():
                self._guard(self._log_file, "parent", path, "")
        for script in sorted(self.run.submitit.glob("*_submission.sh")):
            self._guard(self._log_file, "parent", script, "sbatch")

    # -- files --------------------------------------------------------------------------------------------------

    def _log_file(self, target: str, path: Path, artifact_path: str) -> None:
        if not path.exists():
            return
        if path.is_file() and is_text(path):
            copy = self.spool.files_dir(target) / artifact_path / path.name
            copy.parent.mkdir(parents=True, exist_ok=True)
            write_redacted(path, copy)
            path = copy
        self._append(target, {"op": "artifact", "run": target, "path": self._relative(path), "dir": artifact_path})

    def _relative(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.run.path.resolve()))
        except ValueError:
            return str(path.resolve())

    def _log_stage_logs(self) -> None:
        """This stage's rank-0 stdout/stderr so far (the job is still writing them: what is there is sent)."""
        job_id = self._job_id()
        if job_id is None:
            return
        for suffix in ("out", "err"):
            log = self.run.submitit / f"{job_id}_0_log.{suffix}"
            if log.exists():
                self._log_file(self.stage, log, "logs")

    def _job_id(self) -> str | None:
        attempts = [a for a in self.run.attempts() if a.get("stage") == self.stage]
        if attempts:
            return str(attempts[-1]["job_id"])
        job = self.run.read_json(self.run.launch_file).get("jobs", {}).get(self.stage)
        return str(job) if job else None

    def _log_final(self, final: Path, kind: str) -> None:
        tags = {"clusterft.final_dir": str(final)}
        upload = kind in ("lora", "qlora") or os.environ.get(MODEL_ARTIFACTS_ENV) == "1"
        if kind not in ("lora", "qlora"):
            manifest = model_manifest(final)
            tags.update({"clusterft.final_bytes": str(manifest["bytes"]),
                         "clusterft.final_sha256": manifest["sha256"]})
            copy = self.spool.files_dir(self.stage) / "final-manifest.json"
            copy.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(copy, json.dumps(manifest, indent=2) + "\n")
            self._append(self.stage, {"op": "artifact", "run": self.stage, "path": self._relative(copy), "dir": ""})
        self.set_tags(tags)
        if upload and final.is_dir():
            self._append(self.stage, {"op": "artifact", "run": self.stage, "path": self._relative(final),
                                      "dir": "final"})

    # -- metrics ------------------------------------------------------------------------------------------------

    def _log_values(self, values: dict[str, float], step: int, *, system: bool = False) -> None:
        op: dict[str, Any] = {"op": "metrics", "run": self.stage, "step": int(step), "time": now_ms(),
                              "values": values}
        if system:
            op["system"] = True  # sampled, not replayed from a checkpoint: never skipped, never counted as logged
        self._append(self.stage, op)
        if not system:
            self.current_step = max(self.current_step, int(step))

    def log_system(self, values: dict[str, float]) -> None:
        """Sampled values (system/*) at the current training step."""
        if self._active() and values:
            self._log_values(values, self.current_step, system=True)

    # -- finish -------------------------------------------------------------------------------------------------

    def _finish(self, status: str) -> None:
        if self._monitor is not None:
            self._guard(self._monitor.stop, self.stage == "train")
        self._guard(self._log_stage_logs)
        end = now_ms()
        self._append(self.stage, {"op": "end", "run": self.stage, "status": status, "time": end})
        self._append("parent", {"op": "tags", "run": "parent", "tags": _clean_tags(launch_tags(self.run))})
        if status == "FAILED" or (status == "FINISHED" and self._last_tracked_stage()):
            self._append("parent", {"op": "end", "run": "parent", "status": status, "time": end})
        timeout = _env_float(FLUSH_ENV, FLUSH_DEFAULT_S)
        if status == "KILLED":
            timeout = min(timeout, KILLED_FLUSH_S)
        try:
            if self._sender is not None:
                left = self._sender.flush(timeout)
                if left.remaining:
                    why = f" ({left.error})" if left.error else ""
                    self._say(f"[tracking] {left.remaining} MLflow operation(s) ({left.remaining_points} metric "
                              f"points) not sent yet{why}: kept in {self.spool.dir}; the next stage or "
                              f"`launch sync {self.run.name}` sends them")
                self._sender.stop()
        finally:
            self._env.close()

    # -- plumbing -----------------------------------------------------------------------------------------------

    def _active(self) -> bool:
        return self.enabled and self._started and not self._finished

    def _append(self, name: str, op: dict[str, Any]) -> None:
        if self.enabled and self._started:
            self._guard(self.spool.append, name, op)

    def _say(self, text: str) -> None:
        print(redact_text(text), flush=True)  # stdout: what `launch --local` and `launch logs` show

    def _warn(self, text: str) -> None:
        if not self._warned:
            self._warned = True
            self._say(f"[tracking] {text}")

    def _guard(self, call: Any, *args: Any) -> None:
        try:
            call(*args)
        except Exception as err:  # noqa: BLE001 - tracking must never stop training
            self._warn(f"tracking failed, the stage goes on: {type(err).__name__}: {err}")


def _clean_tags(tags: dict[str, Any]) -> dict[str, str]:
    return {key: str(redact_value(key, str(value))) for key, value in tags.items()}


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default
