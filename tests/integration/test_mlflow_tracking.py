"""MLflow tracking against a real `mlflow server` (tests/integration/mlflow_server.py), through the real CLI.

- shape: one parent run per launch (tags clusterft.*, the params a person compares, summary metrics,
  recipe/plan/launch files), one child run per stage (mlflow.parentRunId, clusterft.stage), train/* system/* metrics
  on train, data/* on prepare, logs, adapter; the experiment marked for fine-tuning
- the server down from the start: training goes on, the runs are created late and the stage itself sends
  everything once the server is back — no `launch sync` needed
- the server stopped mid-training and still down at the end: the launch finishes (it never hangs), the points stay
  spooled, and after a restart `sync_run` (launch sync) sends them: the train/loss history equals an uninterrupted
  run's, step for step and value for value, with no duplicate; a second sync sends nothing
- a token-shaped secret in a 10,000-character value in the recipe: redacted in recipe.yaml; the secret and the
  tracking URI's password are nowhere in the server's store or artifacts, nor in any file the tracker writes

Every tiny run takes ~30-60 s on a 2-core CPU; the only time limits are generous hang guards.

    .venv/bin/python -m pytest tests/integration/test_mlflow_tracking.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.track.spool import Spool
from tests.integration.conftest import LAUNCH_TIMEOUT_S, assert_ok, launch, launch_env
from tests.integration.mlflow_server import MlflowServer

EXPERIMENT = "mlflow-it"
STEPS = 20
HF = "hf_" + "Zq8Xw7Vu6Ts5Rq4Po3Nm2Lk1Ji0Hg9Fe"  # shaped like a Hugging Face token
PASSWORD = "s3cret-Pa55word"
PARENT_TAGS = ("clusterft.recipe", "clusterft.method", "clusterft.model_name", "clusterft.data", "clusterft.data_name",
               "clusterft.run_dir", "clusterft.git_commit", "clusterft.nodes", "clusterft.gpus_per_node",
               "clusterft.world_size", "clusterft.gpu_type", "clusterft.container", "clusterft.slurm_job_ids",
               "clusterft.restarts")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One runs root for the module: the prepared data cache is shared by its runs."""
    return tmp_path_factory.mktemp("mlflow-it")


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(workdir / "server")
    server.start()
    yield server
    server.stop()


def args(name: str, *extra: str, stages: str = "prepare,train") -> list[str]:
    return ["lora", "tiny-starcoder", "--local", "--stages", stages, "--name", name, "--experiment", EXPERIMENT,
            "--runs-dir", "runs", f"training.max_steps={STEPS}", "training.logging_steps=1", *extra]


def run_path(workdir: Path, name: str) -> Path:
    return workdir / "runs" / EXPERIMENT / name


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ids_of(run: Path) -> dict[str, str]:
    return json.loads((run / "mlflow.json").read_text())


def losses(uri: str, run_id: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run_id, "train/loss"))


def spooled_losses(run: Path) -> list[tuple[int, float]]:
    return sorted((op["step"], op["values"]["train/loss"]) for op in Spool(run).ops("train")
                  if op["op"] == "metrics" and "train/loss" in op["values"])


def start_launch(workdir: Path, name: str, uri: str, env: dict[str, str], *extra: str,
                 stages: str = "prepare,train") -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "launchers.cli.main", *args(name, *extra, stages=stages)],
                            cwd=workdir, env=launch_env(env, uri), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(condition: Any, process: subprocess.Popen[str], what: str, timeout: float = LAUNCH_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"launch ended ({process.returncode}) before {what}:\n{out[-3000:]}\n{err[-3000:]}")
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.3)


def step_of(run: Path) -> int:
    try:
        return int(json.loads((run / "last_metrics.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


def finish(process: subprocess.Popen[str]) -> tuple[str, str]:
    """The launch's output once it ends; it must end (hang guard), and succeed."""
    try:
        out, err = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("the launch hung while MLflow was unreachable") from None
    assert process.returncode == 0, f"launch failed ({process.returncode}):\n{out[-4000:]}\n{err[-4000:]}"
    return out, err


def assert_shape(uri: str, run: Path, stages: tuple[str, ...]) -> None:
    """One parent, one child per stage, tags on both, all ended FINISHED; nothing left in the spool."""
    ids = ids_of(run)
    assert ids["tracking_uri"] == uri.replace(f"alice:{PASSWORD}@", "")
    assert set(ids) == {"parent", "tracking_uri", *stages}
    mlflow = client(uri)
    parent = mlflow.get_run(ids["parent"])
    assert parent.info.run_name == run.name and parent.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in parent.data.tags
    missing = [tag for tag in PARENT_TAGS if tag not in parent.data.tags]
    assert not missing, f"parent tags missing: {missing}"
    launch_record = json.loads((run / "launch.json").read_text())
    prepared = sorted(p.name for p in (run.parent.parent / "cache" / "prepared").iterdir())
    tags = parent.data.tags
    assert tags["clusterft.recipe"] == "tiny-starcoder/lora" and tags["clusterft.method"] == "lora"
    assert tags["clusterft.model_name"] == "tiny-starcoder" and tags["clusterft.data"] in prepared
    assert tags["clusterft.run_dir"] == str(run) and tags["clusterft.world_size"] == "1"
    assert tags["clusterft.nodes"] == "1" and tags["clusterft.gpus_per_node"] == "0"
    assert tags["clusterft.container"] == "none" and tags["clusterft.restarts"] == "0"
    assert json.loads(tags["clusterft.slurm_job_ids"]) == launch_record["jobs"]
    visible = [tag for tag in tags if not tag.startswith("mlflow.")]  # what MLflow's UI lists
    assert "clusterft.model" not in visible and not [tag for tag in visible if "spool" in tag], visible
    assert len(tags["clusterft.git_commit"]) == 40 or tags["clusterft.git_commit"] == "unknown"
    assert parent.data.params["steps"] == str(STEPS) and parent.data.params["nodes_x_ranks"] == "1x1"
    assert parent.data.params["method"] == "lora" and parent.data.params["lora_r"] == "8"
    assert len(parent.data.params) <= 20, sorted(parent.data.params)  # what a person compares; recipe.yaml has all
    assert "None" not in parent.data.params.values()
    assert {a.path for a in mlflow.list_artifacts(ids["parent"])} >= {"recipe.yaml", "plan.json", "launch.json"}

    family = mlflow.search_runs([parent.info.experiment_id],
                                filter_string=f"tags.`mlflow.parentRunId` = '{ids['parent']}'")
    assert sorted(r.data.tags["clusterft.stage"] for r in family) == sorted(stages)
    for child in family:
        stage = child.data.tags["clusterft.stage"]
        assert child.info.run_id == ids[stage] and child.info.status == "FINISHED"
        assert child.info.run_name == f"{stage} · {run.name}"  # the stage first: MLflow's table truncates names
        assert child.data.tags["clusterft.recipe"] == "tiny-starcoder/lora"
        assert child.data.tags["clusterft.method"] == "lora"
        assert child.data.tags["clusterft.model_name"] == "tiny-starcoder"
        job = launch_record["jobs"][stage]
        logs = {a.path for a in mlflow.list_artifacts(child.info.run_id, "logs")}
        assert f"logs/{job}_0_log.out" in logs, logs
    assert Spool(run).pending().operations == 0


@pytest.fixture(scope="module")
def baseline(workdir: Path, server: MlflowServer) -> tuple[Path, list[tuple[int, float]]]:
    """An uninterrupted run, the server up all along: the reference history."""
    result = launch(*args("base"), cwd=workdir, env={"CLUSTERFT_SYSTEM_METRICS_S": "2"}, tracking_uri=server.uri)
    assert_ok(result)
    run = run_path(workdir, "base")
    return run, losses(server.uri, ids_of(run)["train"])


def test_parent_and_child_runs_with_every_metric(workdir: Path, server: MlflowServer,
                                                 baseline: tuple[Path, list[tuple[int, float]]]) -> None:
    run, history = baseline
    assert [step for step, _ in history] == list(range(1, STEPS + 1))
    assert history == spooled_losses(run)
    assert_shape(server.uri, run, ("prepare", "train"))
    ids = ids_of(run)
    mlflow = client(server.uri)
    train = mlflow.get_run(ids["train"])
    expected = {"train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_s", "eval/loss",
                "summary/runtime", "system/cpu_percent", "system/memory_rss_gb",
                "system/memory_used_percent", "train/peak_memory_gb"}
    assert expected <= set(train.data.metrics), sorted(expected - set(train.data.metrics))
    assert 0 < train.data.metrics["train/peak_memory_gb"] < 64
    final = {a.path for a in mlflow.list_artifacts(ids["train"], "final")}
    assert "final/adapter_model.safetensors" in final
    assert not any("checkpoint" in a.path for a in mlflow.list_artifacts(ids["train"]))
    assert train.data.tags["clusterft.final_dir"] == str(run / "final")
    prepare = mlflow.get_run(ids["prepare"])
    assert "data/train/tokens" in prepare.data.metrics and not any(k.startswith("data/") for k in train.data.metrics)
    assert all(value != 0 for key, value in prepare.data.metrics.items() if key.startswith("data/"))
    parent_run = mlflow.get_run(ids["parent"])
    experiment = mlflow.get_experiment(parent_run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "finetuning"  # MLflow's UI opens it on runs, not GenAI
    view = json.loads(experiment.tags["mlflow.sharedViewState.clusterft"])  # the runs table's summary columns
    assert "metrics.`train_loss`" in view["selectedColumns"] and "params.`method`" in view["selectedColumns"]
    parent = parent_run.data  # the runs table's columns in MLflow's UI
    assert {"train_loss", "eval_loss", "best_eval_loss", "tokens_per_s", "cpu_rank_hours", "peak_memory_gb"} <= set(
        parent.metrics), sorted(parent.metrics)
    assert parent.metrics["train_loss"] == history[-1][1]
    assert parent.tags["clusterft.data_name"] == "code.jsonl" and int(parent.tags["clusterft.tokens_per_step"]) > 0


def test_server_down_at_start_runs_are_created_late_by_the_stage_itself(
    workdir: Path, server: MlflowServer, baseline: tuple[Path, list[tuple[int, float]]]
) -> None:
    run = run_path(workdir, "late")
    server.stop()
    try:
        process = start_launch(workdir, "late", server.uri, {"CLUSTERFT_TRACKING_FLUSH_S": "60"}, stages="train")
        wait_for(lambda: step_of(run) >= 1, process, "a training step")
        assert not (run / "mlflow.json").exists()  # no run could be created: the creation itself is spooled
    finally:
        server.start()  # while training goes on
    out, _ = finish(process)
    assert "unreachable" in out  # said once, in the stage's output; training went on
    assert_shape(server.uri, run, ("train",))
    assert losses(server.uri, ids_of(run)["train"]) == baseline[1]


def test_outage_mid_training_then_sync_gives_the_uninterrupted_history(
    workdir: Path, server: MlflowServer, baseline: tuple[Path, list[tuple[int, float]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from launchers.sync import sync_run

    run = run_path(workdir, "outage")
    process = start_launch(workdir, "outage", server.uri, {"CLUSTERFT_TRACKING_FLUSH_S": "5"})
    try:
        wait_for(lambda: step_of(run) >= 5, process, "step 5")
    finally:
        server.stop()  # the outage: from step 5 to after the launch ended
    out, _ = finish(process)
    assert f"step {STEPS}/{STEPS}" in out
    assert "not sent yet" in out and "launch sync outage" in out
    left = Spool(run).pending()
    assert left.points > 0
    assert spooled_losses(run) == baseline[1]  # the spool has every step, once

    server.start()
    ids = ids_of(run)
    assert [step for step, _ in losses(server.uri, ids["train"])] != list(range(1, STEPS + 1))  # a gap, for now
    capsys.readouterr()
    report = sync_run(run)  # the URI comes from mlflow.json
    assert report.points == left.points and report.remaining == 0 and report.rejected == 0
    assert f"sent {left.points} metric point(s)" in capsys.readouterr().out
    assert losses(server.uri, ids["train"]) == baseline[1]  # same steps, same values, no duplicate
    assert_shape(server.uri, run, ("prepare", "train"))

    assert sync_run(run).points == 0  # idempotent
    assert losses(server.uri, ids["train"]) == baseline[1]


def test_secrets_never_reach_mlflow(workdir: Path, server: MlflowServer) -> None:
    description = f"data from the hub with {HF} " + "x" * 10_000
    uri_with_password = server.uri.replace("http://", f"http://alice:{PASSWORD}@")
    result = launch(*args("secret", f"description={description}", stages="train"), cwd=workdir,
                    tracking_uri=uri_with_password)
    assert_ok(result)
    run = run_path(workdir, "secret")
    ids = ids_of(run)
    assert ids["tracking_uri"] == server.uri  # no credentials on disk
    mlflow = client(server.uri)
    local = Path(mlflow.download_artifacts(ids["parent"], "recipe.yaml", str(workdir / "download")))
    assert yaml.safe_load(local.read_text())["description"] == description.replace(HF, "***redacted***")

    for secret in (HF, PASSWORD):
        needle = secret.encode()
        stored = [server.store, *server.artifacts.rglob("*")]
        in_server = [p for p in stored if p.is_file() and needle in p.read_bytes()]
        assert not in_server, f"{secret} reached the MLflow server: {in_server}"
        # The launcher redacts secret-looking recipe values when it resolves the recipe, before anything is
        # written: recipe.yaml, launch.json, the pickled job, the sbatch scripts and the logs never hold them.
        in_run = [p for p in run.rglob("*") if p.is_file() and needle in p.read_bytes()]
        assert not in_run, f"{secret} leaked into {in_run}"
