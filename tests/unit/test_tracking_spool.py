"""The MLflow spool (jobs.track.spool), its sender (jobs.track.sender) and the tracker on top of them, against a real
local MLflow store (sqlite), with an outage simulated by a closed 127.0.0.1 port — no fake transport.

- a spool replays in order: runs created (child under parent), metrics with their original steps and timestamps
- an unreachable server costs no time and loses nothing; the replay afterwards sends everything once
- replay is idempotent: offsets lost (a crash after a batch was acknowledged) or mlflow.json lost (a crash after a
  run was created) send nothing twice and create no second run
- a line the server refuses for good is set aside, the rest goes on; half a line left by a killed writer is skipped
- a requeued stage skips the steps it logged before, computed from the spool even when none reached the server
- `launch sync`'s function: counts, idempotence, a one-line error when the server is unreachable

    .venv/bin/python -m pytest tests/unit/test_tracking_spool.py -q
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from jobs.spec.context import RankContext
from jobs.spec.errors import UserError
from jobs.track.sender import Sender
from jobs.track.spool import Spool

HANG_GUARD_S = 60  # never a performance assertion: only "it did not wait for MLflow's 4-minute retries"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite MLflow store for the module (creating one runs MLflow's migrations: seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture
def closed_port() -> str:
    """http://127.0.0.1:<port> where nothing listens: connection refused, at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def run_dir(tmp_path: Path, experiment: str, name: str = "r1") -> Path:
    path = tmp_path / "runs" / experiment / name
    path.mkdir(parents=True)
    return path


def spool_run(path: Path, steps: range, *, start: int = 1_700_000_000_000) -> Spool:
    """A parent and a train child, `steps` of train/loss and train/learning_rate, the child ended."""
    spool = Spool(path)
    experiment = path.parent.name
    spool.append("parent", {"op": "create", "run": "parent", "experiment": experiment, "name": path.name,
                            "key": f"{experiment}-p", "time": start, "tags": {"clusterft.recipe": "m/lora"}})
    spool.append("parent", {"op": "params", "run": "parent", "params": {"recipe.seed": "42"}})
    spool.append("train", {"op": "create", "run": "train", "parent": "parent", "experiment": experiment,
                           "name": f"{path.name}/train", "key": f"{experiment}-t", "time": start,
                           "tags": {"clusterft.stage": "train"}})
    for step in steps:
        spool.append("train", {"op": "metrics", "run": "train", "step": step, "time": start + 1000 * step,
                               "values": {"train/loss": 10.0 / step, "train/learning_rate": 1e-3 * step}})
    spool.append("train", {"op": "end", "run": "train", "status": "FINISHED", "time": start + 10**6})
    return spool


def history(uri: str, run_id: str, key: str = "train/loss") -> list[tuple[int, float, int]]:
    return sorted((m.step, m.value, m.timestamp) for m in client(uri).get_metric_history(run_id, key))


def experiment_runs(uri: str, experiment: str) -> list[Any]:
    found = client(uri).get_experiment_by_name(experiment)
    assert found is not None
    return list(client(uri).search_runs([found.experiment_id]))


def test_replay_creates_runs_and_keeps_original_steps_and_times(tmp_path: Path, store: str) -> None:
    path = run_dir(tmp_path, "replay")
    spool_run(path, range(1, 6))
    result = Sender(path, store).send()
    assert result.error is None and result.remaining == 0 and result.rejected == 0
    assert result.points == 10 and sorted(result.created) == ["parent", "train"]

    ids = json.loads((path / "mlflow.json").read_text())
    assert ids["tracking_uri"] == store
    assert history(store, ids["train"]) == [(s, 10.0 / s, 1_700_000_000_000 + 1000 * s) for s in range(1, 6)]
    child = client(store).get_run(ids["train"])
    assert child.data.tags["mlflow.parentRunId"] == ids["parent"]
    assert child.info.status == "FINISHED" and child.info.end_time == 1_700_000_000_000 + 10**6
    parent = client(store).get_run(ids["parent"])
    assert parent.data.params == {"recipe.seed": "42"}
    assert parent.info.artifact_uri.startswith((tmp_path / "runs" / "mlartifacts" / "replay").as_uri())


def test_outage_costs_no_time_and_loses_nothing(tmp_path: Path, store: str, closed_port: str) -> None:
    path = run_dir(tmp_path, "outage")
    spool = spool_run(path, range(1, 21))
    started = time.monotonic()
    down = Sender(path, closed_port).send()
    assert time.monotonic() - started < HANG_GUARD_S
    assert down.error == "connection refused" and down.points == 0
    assert down.remaining == 2 + 1 + 20 + 1 and down.remaining_points == 40
    assert not (path / "mlflow.json").exists()
    assert all(spool.offset(name) == 0 for name in spool.names())

    up = Sender(path, store).send()
    assert up.error is None and up.points == 40 and up.remaining == 0
    ids = json.loads((path / "mlflow.json").read_text())
    assert [step for step, _, _ in history(store, ids["train"])] == list(range(1, 21))


def test_replay_after_lost_offsets_or_lost_ids_sends_nothing_twice(tmp_path: Path, store: str) -> None:
    path = run_dir(tmp_path, "idempotent")
    spool = spool_run(path, range(1, 11))
    assert Sender(path, store).send().remaining == 0
    ids = json.loads((path / "mlflow.json").read_text())
    expected = history(store, ids["train"])

    for name in spool.names():  # a crash after the server acknowledged, before the offsets were saved
        spool.set_offset(name, 0)
    assert Sender(path, store).send().remaining == 0
    assert history(store, ids["train"]) == expected

    (path / "mlflow.json").unlink()  # a crash after the runs were created, before their ids were saved
    for name in spool.names():
        spool.set_offset(name, 0)
    again = Sender(path, store).send()
    assert again.remaining == 0 and again.rejected == 0
    assert json.loads((path / "mlflow.json").read_text()) == ids  # found by their spool key, not created again
    assert history(store, ids["train"]) == expected
    assert len(experiment_runs(store, "idempotent")) == 2


def test_refused_line_is_set_aside_and_a_torn_line_skipped(tmp_path: Path, store: str) -> None:
    path = run_dir(tmp_path, "refused")
    spool = spool_run(path, range(1, 3))
    spool.append("parent", {"op": "params", "run": "parent", "params": {"recipe.seed": "7"}})  # a param changed
    with spool.path("train").open("ab") as handle:
        handle.write(b'{"op": "metrics", "run": "tra')  # a writer killed mid-line
    writer = Spool(path)  # the next process appending to the same file
    writer.append("train", {"op": "metrics", "run": "train", "step": 3, "time": 1_700_000_003_000,
                            "values": {"train/loss": 0.5}})
    result = Sender(path, store).send()
    assert result.error is None and result.remaining == 0 and result.rejected == 2
    rejected = [json.loads(line) for name in ("parent", "train")
                for line in (spool.dir / f"{name}.rejected.jsonl").read_text().splitlines()]
    assert "INVALID_PARAMETER_VALUE" in rejected[0]["reason"] and rejected[0]["line"]["params"] == {"recipe.seed": "7"}
    assert rejected[1]["reason"] == "not a spool line"
    ids = json.loads((path / "mlflow.json").read_text())
    assert [step for step, _, _ in history(store, ids["train"])] == [1, 2, 3]


def tracker(path: Path, stage: str = "train") -> Any:
    from jobs.track.tracker import Tracker

    return Tracker(RankContext(run_dir=path), stage, system_metrics=False)


def test_requeued_stage_skips_logged_steps_from_the_spool_even_during_an_outage(
    tmp_path: Path, store: str, closed_port: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from launchers.sync import sync_run

    path = run_dir(tmp_path, "requeue")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed_port)
    monkeypatch.setenv("CLUSTERFT_TRACKING_FLUSH_S", "1")
    started = time.monotonic()
    first = tracker(path)
    first.start()
    for step in range(1, 11):
        first.log_metrics({"train/loss": 1.0 / step, "train/epoch": step / 10}, step)
    first.finish("KILLED")  # requeued on a time limit
    assert time.monotonic() - started < HANG_GUARD_S
    assert "not sent yet (connection refused)" in capsys.readouterr().out

    second = tracker(path)  # the requeued job resumes from its step-5 checkpoint: steps 6..10 come again
    second.start()
    assert second.logged_through == 10
    for step in range(6, 16):
        second.log_metrics({"train/loss": 1.0 / step, "train/epoch": step / 10}, step)
    second.finish("FINISHED")
    assert not (path / "mlflow.json").exists()  # nothing reached a server yet: not even the runs

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    report = sync_run(path, uri=store)
    assert sorted(report.created) == ["parent", "train"] and report.points == 30 and report.remaining == 0
    ids = json.loads((path / "mlflow.json").read_text())
    assert [(step, value) for step, value, _ in history(store, ids["train"])] == [(s, 1.0 / s) for s in range(1, 16)]
    run = client(store).get_run(ids["train"])
    assert run.info.status == "FINISHED" and run.data.tags["clusterft.stage"] == "train"
    assert client(store).get_run(ids["parent"]).info.status == "FINISHED"  # the launch's last stage (no launch.json)

    assert sync_run(path, uri=store).points == 0  # twice: nothing more
    assert len(history(store, ids["train"])) == 15


def test_sync_unreachable_server_is_one_line_and_keeps_the_spool(
    tmp_path: Path, closed_port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from launchers.sync import sync_run

    path = run_dir(tmp_path, "unreachable")
    spool_run(path, range(1, 4))
    with pytest.raises(UserError) as caught:
        sync_run(path, uri=closed_port)
    message = str(caught.value)
    assert "\n" not in message and "unreachable (connection refused)" in message
    assert Spool(path).pending().operations == 2 + 1 + 3 + 1

    empty = run_dir(tmp_path, "unreachable", "never-tracked")
    assert sync_run(empty).operations == 0
    assert "nothing spooled" in capsys.readouterr().out


def test_sync_refuses_a_different_server_than_the_run_was_started_with(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from launchers.sync import sync_run

    path = run_dir(tmp_path, "elsewhere")
    spool_run(path, range(1, 3))
    assert Sender(path, store).send().remaining == 0
    Spool(path).append("train", {"op": "tags", "run": "train", "tags": {"late": "1"}})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret@mlflow.example.com")
    with pytest.raises(UserError) as caught:
        sync_run(path)
    assert "s3cret" not in str(caught.value) and "mlflow.example.com" in str(caught.value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert sync_run(path).operations == 1  # the URI recorded in mlflow.json


@pytest.mark.parametrize("opt_in", [False, True])
def test_full_model_is_described_not_uploaded_unless_asked(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch, opt_in: bool
) -> None:
    import hashlib

    path = run_dir(tmp_path, f"full-{opt_in}")
    final = path / "final"
    final.mkdir()
    (final / "model-00001-of-00002.safetensors").write_bytes(b"a" * 5000)
    (final / "model-00002-of-00002.safetensors").write_bytes(b"b" * 3000)
    (final / "config.json").write_text("{}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    if opt_in:
        monkeypatch.setenv("CLUSTERFT_LOG_MODEL_ARTIFACTS", "1")
    train = tracker(path)
    train.start()
    train.log_final(final, "full")
    train.finish("FINISHED")

    listing = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
                      for p in sorted(final.glob("*.safetensors")))  # what `sha256sum *.safetensors` prints
    ids = json.loads((path / "mlflow.json").read_text())
    run = client(store).get_run(ids["train"])
    assert run.data.tags["clusterft.final_dir"] == str(final)
    assert run.data.tags["clusterft.final_bytes"] == str(5000 + 3000 + 2)
    assert run.data.tags["clusterft.final_sha256"] == hashlib.sha256(listing.encode()).hexdigest()
    artifacts = {a.path for a in client(store).list_artifacts(ids["train"])}
    assert "final-manifest.json" in artifacts
    assert ("final" in artifacts) is opt_in
