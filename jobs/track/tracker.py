"""MLflow tracking for a launch: one parent run, one child run per stage, written by global rank 0 only.

Shape. The parent run (named after the run directory) holds what the launch is: the resolved recipe and plan as
params, tags `clusterft.*` (recipe, method, model, model_name, data, run_dir, git_commit, nodes, gpus_per_node,
world_size, gpu_type, container, slurm_job_ids, restarts, executor) and the files recipe.yaml, plan.json,
launch.json and the sbatch scripts. Each stage (prepare, train, export, eval) is a child run (`<name>/<stage>`,
tagged mlflow.parentRunId, clusterft.stage and the recipe tags) with its metrics and, at its end, its rank-0 logs
and — for LoRA/QLoRA training — the adapter. Run ids live in <run>/mlflow.json ({"parent": id, "train": id, ...,
"tracking_uri": uri without credentials}); whichever stage starts first creates the parent, a requeued or relaunched
stage continues its own child run.

Outages. Every call is first a line in <run>/mlflow-spool/ (see jobs.track.spool): the training loop never touches the
network. A background thread sends the spool; at the stage's end `finish()` waits at most
$CLUSTERFT_TRACKING_FLUSH_S seconds (default 30) for it to drain and leaves the rest for the next stage or
`launch sync RUN`, which replay it with the original steps and timestamps, never twice. A requeued train stage skips
the steps it logged before (those replayed from its last checkpoint): the highest step of each metric, and of
train/loss for all of them, is read from the local spool, not asked of the server.

Secrets. Params, tags and the files sent are redacted first (jobs.spec.redaction): keys named like secrets and values
shaped like tokens become "***redacted***". The environment is never logged.

Params longer than MAX_PARAM_CHARS (500: what every MLflow server accepts; MLflow 3 takes 6000) are logged as a
short pointer and written whole, redacted, to <run>/params-long.json, an artifact of the parent run.

Metrics of the train child: what the trainer logs (train/loss, train/learning_rate, train/grad_norm,
train/tokens_per_s, eval/loss, summary/*), the prepare report (data/*), system metrics every
$CLUSTERFT_SYSTEM_METRICS_S seconds (default 15; 0 turns them off) — system/cpu_percent (the machine),
system/memory_rss_gb (this process), system/memory_used_percent, and with NVML and CUDA system/gpu<i>/memory_used_gb,
.../memory_used_percent, .../utilization_percent — and train/peak_memory_gb at the end (torch.cuda's peak on GPU,
the process's peak RSS on CPU). GB are 10^9 bytes.

Models. The final adapter of a LoRA/QLoRA run is an artifact (small). A full fine-tune is never uploaded by default:
the train child gets tags clusterft.final_dir, clusterft.final_bytes (every file in final/) and
clusterft.final_sha256 (sha256 of `sha256sum *.safetensors` in final/, computed streaming) and a manifest artifact
with each file's size and sha256; CLUSTERFT_LOG_MODEL_ARTIFACTS=1 uploads final/ too. Checkpoints never are.

Tracking never drives control flow: a failure is reported once (on stdout, with the stage's output) and the
stage goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from jobs.spec.context import RankContext
from jobs.spec.stages import TRACKED_STAGES
from jobs.spec.redaction import is_secret_key, redact_text, redact_tree, redact_value
from jobs.track.spool import Sender, SenderThread, Spool, fast_http, now_ms
from jobs.spec.rundir import RunDir, public_uri, tracking_uri, write_atomic

__all__ = ["MAX_PARAM_CHARS", "SystemMonitor", "Tracker", "flatten", "git_commit", "is_secret_key", "model_manifest"]

MAX_PARAM_CHARS = 500
LONG_PARAMS_FILE = "params-long.json"
FLUSH_ENV, FLUSH_DEFAULT_S = "CLUSTERFT_TRACKING_FLUSH_S", 30.0
KILLED_FLUSH_S = 5.0  # a requeued or cancelled stage has little time left: the next attempt sends the rest
SYSTEM_ENV, SYSTEM_DEFAULT_S = "CLUSTERFT_SYSTEM_METRICS_S", 15.0
MODEL_ARTIFACTS_ENV = "CLUSTERFT_LOG_MODEL_ARTIFACTS"
# Stages whose job creates a Tracker: the parent run ends with the last of them in a launch.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
GB = 1e9


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists stay values."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


class Tracker:
    """Tracking for one stage of one run; a no-op on every rank but global rank 0.

        tracker = Tracker(context, "train", recipe, plan)
        tracker.start()                        # parent (if first) and child runs, params, tags, launch files
        tracker.set_data(cache_key)            # clusterft.data on the parent
        tracker.log_metrics({"train/loss": 1.2}, step=10)
        tracker.log_final(run.final, "lora")   # the adapter, or a full model's size and sha256
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

    def log_data_report(self, report: dict[str, Any]) -> None:
        """The prepare report as data/<split>/<number> metrics at step 0."""
        self.log_metrics({f"data/{split}/{key}": float(value) for split, numbers in report.get("splits", {}).items()
                          for key, value in numbers.items() if isinstance(value, int | float)}, step=0)

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
            self._append("parent", {"op": "tags", "run": "parent", "tags": _clean_tags(self._launch_tags())})
        else:
            self._append("parent", {"op": "create", "run": "parent", "experiment": self.run.experiment,
                                    "name": self.run.name, "key": uuid.uuid4().hex, "time": now_ms(),
                                    "tags": _clean_tags(self._parent_tags())})
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
            tags = {**self._recipe_tags(), "clusterft.stage": self.stage,
                    "clusterft.restarts": str(self._stage_restarts())}
            self._append(self.stage, {"op": "create", "run": self.stage, "parent": "parent",
                                      "experiment": self.run.experiment, "name": f"{self.run.name}/{self.stage}",
                                      "key": uuid.uuid4().hex, "time": now_ms(), "tags": _clean_tags(tags)})
        self._sender = SenderThread(Sender(self.run.path, self.uri), say=self._say)
        self._sender.start()
        interval = _env_float(SYSTEM_ENV, SYSTEM_DEFAULT_S)
        if self.system_metrics and interval > 0:
            self._monitor = SystemMonitor(self, interval)
            self._monitor.start()

    def _recipe_tags(self) -> dict[str, str]:
        recipe = self.recipe
        if recipe is None:
            return {}
        return {"clusterft.recipe": recipe.name, "clusterft.method": recipe.method.kind,
                "clusterft.model_name": recipe.model_name}

    def _parent_tags(self) -> dict[str, str]:
        tags = {**self._recipe_tags(), "clusterft.run_dir": str(self.run.path), "clusterft.git_commit": git_commit()}
        tags["mlflow.source.git.commit"] = tags["clusterft.git_commit"]
        if self.recipe is not None:
            resources = self.recipe.resources
            tags.update({"clusterft.model": self.recipe.model.name_or_path,
                         "clusterft.gpus_per_node": str(resources.gpus_per_node),
                         "clusterft.gpu_type": resources.gpu_type or "none"})
        if self.plan is not None:
            tags.update({"clusterft.nodes": str(self.plan.nodes), "clusterft.world_size": str(self.plan.world_size)})
        return {**tags, **self._launch_tags()}

    def _launch_tags(self) -> dict[str, str]:
        """What changes while a launch runs: the job ids (stages are submitted, requeued), the restarts."""
        launch = self.run.read_json(self.run.launch_file)
        return {"clusterft.container": str(launch.get("container") or "none"),
                "clusterft.executor": str(launch.get("executor") or "unknown"),
                "clusterft.slurm_job_ids": json.dumps(launch.get("jobs", {}), sort_keys=True),
                "clusterft.restarts": str(requeues(self.run.path))}

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
        params: dict[str, Any] = {"recipe": self.recipe.model_dump(mode="json")}
        if self.plan is not None:
            params["plan"] = {k: v for k, v in self.plan.as_dict().items() if k not in ("accelerate", "deepspeed")}
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
        self._append("parent", {"op": "params", "run": "parent", "params": short})
        if long:
            write_atomic(self.run.path / LONG_PARAMS_FILE, json.dumps(long, indent=2, default=str) + "\n")
            self._append("parent", {"op": "artifact", "run": "parent", "path": LONG_PARAMS_FILE, "dir": ""})

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
        if path.is_file() and _is_text(path):
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
        self._append("parent", {"op": "tags", "run": "parent", "tags": _clean_tags(self._launch_tags())})
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


def requeues(run_dir: Path) -> int:
    """Requeues so far over every stage (attempts.jsonl: one line per start of a stage)."""
    counts: dict[str, int] = {}
    for attempt in RunDir(run_dir).attempts():
        counts[attempt.get("stage", "")] = counts.get(attempt.get("stage", ""), 0) + 1
    return sum(max(0, n - 1) for n in counts.values())


def git_commit(root: Path = PROJECT_ROOT) -> str:
    """The project checkout's commit (read from .git, else `git rev-parse`), or "unknown". Never fails."""
    try:
        git = root / ".git"
        gitdir = git
        if git.is_file():  # a worktree or submodule: "gitdir: <path>"
            gitdir = (root / git.read_text().split("gitdir:", 1)[1].strip()).resolve()
        head = (gitdir / "HEAD").read_text().strip()
        if re.fullmatch(r"[0-9a-f]{40,64}", head):
            return head
        if head.startswith("ref:"):
            ref = head[4:].strip()
            common = gitdir
            if (gitdir / "commondir").exists():
                common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
            for base in (gitdir, common):
                if (base / ref).exists():
                    return (base / ref).read_text().strip()
            packed = common / "packed-refs"
            if packed.exists():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
    except (OSError, IndexError, ValueError):
        pass
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=False)
        if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", done.stdout.strip()):
            return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def model_manifest(final: Path) -> dict[str, Any]:
    """Size of every file in `final` and the sha256 of its weights (safetensors or GGUF, else .bin), hashed streaming.
    `sha256` is the digest of the `sha256sum` listing of the weight files, so
    `cd final && sha256sum *.safetensors | sha256sum` gives the same value."""
    files = sorted(p for p in final.rglob("*") if p.is_file())
    weights = [p for p in files if p.suffix in (".safetensors", ".gguf")] or [p for p in files if p.suffix == ".bin"]
    listing = []
    per_file: dict[str, Any] = {}
    for path in files:
        name = str(path.relative_to(final))
        entry: dict[str, Any] = {"bytes": path.stat().st_size}
        if path in weights:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                while block := handle.read(1 << 24):
                    digest.update(block)
            entry["sha256"] = digest.hexdigest()
            listing.append(f"{entry['sha256']}  {name}\n")
        per_file[name] = entry
    return {"path": str(final), "bytes": sum(e["bytes"] for e in per_file.values()),
            "sha256": hashlib.sha256("".join(listing).encode()).hexdigest(), "files": per_file}


def _is_text(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(8192)
    except OSError:
        return False
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start > len(head) - 4  # a character cut at the block's end
    return True


def write_redacted(source: Path, target: Path) -> None:
    """A redacted copy of a text file: YAML and JSON structurally (keys named like secrets), then by shape."""
    text = source.read_text(encoding="utf-8", errors="replace")
    if source.suffix in (".yaml", ".yml", ".json"):
        try:
            if source.suffix == ".json":
                redacted = json.dumps(redact_tree(json.loads(text)), indent=2, sort_keys=True) + "\n"
            else:
                import yaml

                redacted = yaml.safe_dump(redact_tree(yaml.safe_load(text)), sort_keys=False, allow_unicode=True)
            write_atomic(target, redact_text(redacted))
            return
        except Exception:  # noqa: BLE001 - not parseable (ValueError, yaml.YAMLError): redact it as text
            pass
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with source.open("r", encoding="utf-8", errors="replace") as src, tmp.open("w", encoding="utf-8") as dst:
        for line in src:
            dst.write(redact_text(line))
    os.replace(tmp, target)


class SystemMonitor:
    """Rank 0's machine every `interval` seconds, from a background thread: CPU, this process's memory, the
    machine's memory, and with NVML and CUDA each visible GPU's memory and utilization."""

    def __init__(self, tracker: Tracker, interval: float) -> None:
        self.tracker = tracker
        self.interval = interval
        self._stop = threading.Event()
        self._process: Any = None
        self._gpus: list[tuple[int, Any]] = []
        self._thread = threading.Thread(target=self._loop, name="system-metrics", daemon=True)

    def start(self) -> None:
        try:
            import psutil

            self._process = psutil.Process()
            psutil.cpu_percent(None)  # the first reading only starts the interval
        except ImportError:
            self._process = None
        self._gpus = _nvml_gpus()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        try:
            values = self.read()
            if values:
                self.tracker._log_values(values, self.tracker.current_step, system=True)
        except Exception:  # noqa: BLE001 - a sensor failing is no reason to stop
            pass

    def read(self) -> dict[str, float]:
        values: dict[str, float] = {}
        if self._process is not None:
            import psutil

            values["system/cpu_percent"] = float(psutil.cpu_percent(None))
            values["system/memory_rss_gb"] = self._process.memory_info().rss / GB
            values["system/memory_used_percent"] = float(psutil.virtual_memory().percent)
        if self._gpus:
            import pynvml

            for index, handle in self._gpus:
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                values[f"system/gpu{index}/memory_used_gb"] = memory.used / GB
                values[f"system/gpu{index}/memory_used_percent"] = 100.0 * memory.used / max(memory.total, 1)
                values[f"system/gpu{index}/utilization_percent"] = float(
                    pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        return values

    def stop(self, peak_memory: bool = False) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()
        if peak_memory:
            self.tracker._log_values({"train/peak_memory_gb": peak_memory_gb()}, self.tracker.current_step)


def peak_memory_gb() -> float:
    """torch.cuda's peak allocation on this rank's GPU; on CPU the process's peak resident memory."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / GB
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / GB if sys.platform == "darwin" else rss * 1024 / GB  # bytes on macOS, KiB on Linux


def _nvml_gpus() -> list[tuple[int, Any]]:
    """(CUDA ordinal, NVML handle) of each visible GPU, when pynvml is importable and CUDA is present."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return []
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        indices = [int(i) for i in visible.split(",")] if re.fullmatch(r"\d+(,\d+)*", visible) else range(count)
        return [(ordinal, pynvml.nvmlDeviceGetHandleByIndex(index)) for ordinal, index in enumerate(indices)
                if index < count]
    except Exception:  # noqa: BLE001 - no NVML, no GPU metrics
        return []
