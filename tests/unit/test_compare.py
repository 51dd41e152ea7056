"""`launch compare` against a real sqlite MLflow store: the table's numbers, pairing, csv/json, the PNG, artifacts.

The store is built once for the module with MlflowClient, following the layout `jobs.track.tracker` writes: a parent run
per launch (tags clusterft.*), a child run per stage (mlflow.parentRunId, clusterft.stage), metric histories on the
train child, HumanEval on the eval child. Three launches: a full fine-tune and a QLoRA of the same model and data
(a pair) on GPUs, and an unrelated CPU run of another model in another experiment.
"""

from __future__ import annotations

import csv
import io
import json
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs.spec.errors import UserError
from launchers.compare import collect, compare
from launchers.compare.plot import figure
from launchers.compare.table import render

T0 = 1_767_000_000_000  # ms
HOUR_MS = 3_600_000
DATA = "5f3c2a9d81e04b7c"  # clusterft.data: the fingerprint both starcoder15b runs share


def parent_tags(recipe: str, method: str, model_name: str, data: str, world: int, gpus: int, nodes: int,
                run_dir: Path) -> dict[str, str]:
    return {"clusterft.recipe": recipe, "clusterft.method": method, "clusterft.model": f"hub/{model_name}",
            "clusterft.model_name": model_name, "clusterft.data": data, "clusterft.run_dir": str(run_dir),
            "clusterft.world_size": str(world), "clusterft.gpus_per_node": str(gpus), "clusterft.nodes": str(nodes),
            "clusterft.gpu_type": "A100-80GB" if gpus else "", "clusterft.restarts": "0"}


def make_launch(client: Any, root: Path, experiment: str, name: str, tags: dict[str, str], train_ms: int,
                metrics: dict[str, list[tuple[int, float]]], evaluation: dict[str, float] | None = None,
                write_ids: bool = True, launched: int = T0) -> str:
    """A run directory (launch.json, mlflow.json) and its MLflow parent run with prepare/train(/eval) children."""
    from mlflow.entities import Metric

    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(
        experiment, artifact_location=(root / "mlartifacts" / experiment).as_uri())
    parent = client.create_run(experiment_id, start_time=launched, tags=tags, run_name=name).info.run_id
    ids = {"parent": parent, "tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}
    start = launched
    for stage, ms in (("prepare", 60_000), ("train", train_ms), ("eval", 120_000)):
        if stage == "eval" and evaluation is None:
            continue
        child = client.create_run(experiment_id, start_time=start, run_name=f"{stage} · {name}",
                                  tags={"mlflow.parentRunId": parent, "clusterft.stage": stage}).info.run_id
        ids[stage] = child
        batch = []
        if stage == "train":
            for key, points in metrics.items():
                batch += [Metric(key, value, start + step * 1000, step) for step, value in points]
        if stage == "eval":
            batch += [Metric(key, value, start + 1000, 0) for key, value in (evaluation or {}).items()]
        for i in range(0, len(batch), 500):
            client.log_batch(child, metrics=batch[i : i + 500])
        client.set_terminated(child, "FINISHED", end_time=start + ms)
        start += ms
    client.set_terminated(parent, "FINISHED", end_time=start)
    run_dir = root / experiment / name
    run_dir.mkdir(parents=True)
    (run_dir / "launch.json").write_text(json.dumps({"executor": "slurm", "stages": ["prepare", "train"],
                                                     "jobs": {}}))
    if write_ids:
        (run_dir / "mlflow.json").write_text(json.dumps(ids))
    return parent


def curve(steps: range, start: float, end: float) -> list[tuple[int, float]]:
    last = steps[-1]
    return [(s, start + (end - start) * (s / last) ** 0.5) for s in steps]


def schedule(steps: range, peak: float) -> list[tuple[int, float]]:
    import math

    last = steps[-1]
    return [(s, peak * min(1.0, s / 30) * 0.5 * (1 + math.cos(math.pi * s / last))) for s in steps]


def build_store(root: Path) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    steps = range(10, 410, 10)
    full = make_launch(
        client, root, "starcoder15b", "sc-full",
        parent_tags("starcoder15b/full-ft", "full", "starcoder15b", DATA, 16, 8, 2, root / "starcoder15b/sc-full"),
        train_ms=2 * HOUR_MS,
        metrics={"train/loss": curve(steps, 2.0, 0.9), "train/learning_rate": schedule(steps, 5e-5),
                 "eval/loss": [(100, 1.50), (200, 1.20), (300, 1.10), (400, 1.15)],
                 "train/tokens_per_s": [(100, 1000.0), (200, 1100.0), (300, 1200.0), (350, 5000.0), (400, 1150.0)],
                 "train/peak_memory_gb": [(100, 60.5), (400, 61.25)]},
        evaluation={"eval/humaneval_pass_at_1": 0.35, "eval/humaneval_pass_at_10": 0.52,  # MLflow: no "@"
                    "eval/fim_exact_match": 0.25, "eval/heldout_loss": 1.05, "eval/base_heldout_loss": 1.4,
                    "eval/fim_edit_similarity": 0.5, "eval/base_fim_edit_similarity": 0.375,
                    "eval/base_fim_exact_match": 0.125})
    qlora = make_launch(
        client, root, "starcoder15b", "sc-qlora",
        parent_tags("starcoder15b/qlora", "qlora", "starcoder15b", DATA, 8, 8, 1, root / "starcoder15b/sc-qlora"),
        train_ms=3 * HOUR_MS,
        metrics={"train/loss": curve(steps, 2.1, 1.0), "train/learning_rate": schedule(steps, 5e-4),
                 "eval/loss": [(100, 1.60), (200, 1.30), (300, 1.25), (400, 1.22)],
                 "train/tokens_per_s": [(100, 480.0), (200, 500.0), (400, 520.0)]},
        launched=T0 - HOUR_MS)  # launched before the full fine-tune: the pair still lists full first
    tiny = make_launch(
        client, root, "tiny-starcoder", "tiny-lora",
        parent_tags("tiny-starcoder/lora", "lora", "tiny-starcoder", "0000aaaa", 2, 0, 1,
                    root / "tiny-starcoder/tiny-lora"),
        train_ms=90_000,
        metrics={"train/loss": curve(range(5, 35, 5), 7.5, 6.0), "train/learning_rate": schedule(range(5, 35, 5), 3e-3),
                 "eval/loss": [(15, 7.0), (30, 6.4)], "train/tokens_per_s": [(10, 2000.0), (30, 2100.0)]})
    make_launch(client, root, "tiny-starcoder", "untracked", {}, 0, {}, write_ids=False)  # mlflow.json never written
    return {"sc-full": full, "sc-qlora": qlora, "tiny-lora": tiny}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("runs")
    return root, build_store(root)


@pytest.fixture(scope="module")
def written(store: tuple[Path, dict[str, str]]) -> Iterator[dict[str, Any]]:
    """`launch compare` of all three runs, once: JSON output, PNGs and artifacts written."""
    root, _ = store
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield json.loads(compare(root, fmt="json"))


def row(document: dict[str, Any], run: str) -> dict[str, Any]:
    return next(r for r in document["runs"] if r["run"] == run)


def test_final_and_best_metrics_and_gpu_hours(written: dict[str, Any]) -> None:
    full, qlora, tiny = (row(written, name) for name in ("sc-full", "sc-qlora", "tiny-lora"))
    assert full["final_eval_loss"] == 1.15 and full["best_eval_loss"] == 1.10 and full["best_eval_step"] == 300
    assert qlora["final_eval_loss"] == qlora["best_eval_loss"] == 1.22
    assert full["final_train_loss"] == pytest.approx(0.9) and full["steps"] == 400
    assert full["median_tokens_per_s"] == 1150.0 and qlora["median_tokens_per_s"] == 500.0  # the outlier ignored
    assert full["gpu_hours"] == pytest.approx(16 * 2) and full["cpu_rank_hours"] is None  # 16 GPUs × 2 h
    assert qlora["gpu_hours"] == pytest.approx(8 * 3)
    assert tiny["gpu_hours"] is None and tiny["cpu_rank_hours"] == pytest.approx(2 * 90 / 3600)  # 2 CPU ranks
    assert full["peak_memory_gb"] == 61.25 and qlora["peak_memory_gb"] is None
    assert full["humaneval_pass_at_1"] == 0.35 and qlora["humaneval_pass_at_1"] is None
    assert (full["fim_exact_match"], full["heldout_loss"], full["base_heldout_loss"]) == (0.25, 1.05, 1.4)
    assert (full["fim_edit_similarity"], full["base_fim_edit_similarity"], full["base_fim_exact_match"]) == (
        0.5, 0.375, 0.125)
    assert full["eval_metrics"]["eval/humaneval_pass_at_10"] == 0.52
    assert (full["recipe"], full["method"], full["experiment"]) == ("starcoder15b/full-ft", "full", "starcoder15b")


def test_same_model_and_data_are_paired_and_the_rest_is_other(written: dict[str, Any]) -> None:
    pair, other = written["groups"]
    assert pair["paired"] and pair["runs"] == ["starcoder15b/sc-full", "starcoder15b/sc-qlora"]  # full first
    (delta,) = pair["deltas"]
    assert delta["methods"] == "full vs qlora"
    assert delta["eval_loss_diff"] == pytest.approx(1.15 - 1.22)
    assert delta["speed_ratio"] == pytest.approx(1150 / 500)
    assert delta["compute_ratio"] == pytest.approx(32 / 24)
    assert not other["paired"] and other["runs"] == ["tiny-starcoder/tiny-lora"] and other["deltas"] == []


def test_text_table_groups_runs_with_a_delta_line(store: tuple[Path, dict[str, str]]) -> None:
    root, _ = store
    text = render(collect(root), "text")
    lines = text.splitlines()
    assert lines[0].startswith(f"starcoder15b, data {DATA[:12]}: full vs qlora")
    assert lines[1].split() == ["RUN", "RECIPE", "METHOD", "STEPS", "LAST", "EVAL", "LOSS", "BEST", "EVAL",
                                "(STEP)", "LAST", "TRAIN", "LOSS", "MEDIAN", "TOKENS/S", "COMPUTE", "PEAK", "MEM",
                                "HUMANEVAL@1", "FIM", "EM", "FIM", "EDIT", "HELDOUT", "LOSS", "(VS", "BASE)"]
    full = next(line for line in lines if "starcoder15b/sc-full " in line).split()
    assert full[1:7] == ["starcoder15b/full-ft", "full", "400", "1.1500", "1.1000", "@300"]
    assert "32.00 GPU-h" in lines[2] and "61.2 GB" in lines[2]
    assert lines[2].split()[-5:] == ["0.35", "0.2500", "0.5000", "1.0500", "(-25.0%)"]
    base = lines[4].split()  # under the group's two runs: the base on the same held-out data
    assert base == ["(base)", "starcoder15b", "0.1250", "0.3750", "1.4000"]
    assert lines[4].index("1.4000") == lines[2].index("1.0500"), "the base's figures sit in the runs' columns"
    delta = next(line for line in lines if line.strip().startswith("full vs qlora"))
    assert "eval loss 1.1500 vs 1.2200 (-0.0700)" in delta and "speed 2.30×" in delta and "compute 1.33×" in delta
    assert "other runs" in lines
    assert "0.05 CPU rank-h" in next(line for line in lines if "tiny-lora" in line)
    header_columns = [lines[1].index(word) for word in ("RECIPE", "COMPUTE")]
    other_header = lines[lines.index("other runs") + 1]
    assert [other_header.index(word) for word in ("RECIPE", "COMPUTE")] == header_columns  # aligned across groups


def test_csv_has_one_row_per_run_with_raw_numbers(store: tuple[Path, dict[str, str]]) -> None:
    root, _ = store
    rows = list(csv.DictReader(io.StringIO(render(collect(root), "csv"))))
    assert [r["run"] for r in rows] == ["sc-full", "sc-qlora", "tiny-lora"]
    full = rows[0]
    assert float(full["gpu_hours"]) == pytest.approx(32.0) and full["cpu_rank_hours"] == ""
    assert float(full["best_eval_loss"]) == 1.10 and full["best_eval_step"] == "300"
    assert rows[1]["humaneval_pass_at_1"] == "" and rows[2]["group"] == "tiny-lora"


def test_runs_by_name_and_by_experiment(store: tuple[Path, dict[str, str]]) -> None:
    root, ids = store
    chosen = collect(root, ["sc-qlora", "tiny-starcoder/tiny-lora"])
    assert [r.parent_id for r in chosen.runs] == [ids["sc-qlora"], ids["tiny-lora"]]
    assert [g.paired for g in chosen.groups] == [False]  # qlora's partner was not selected
    by_experiment = collect(root, experiment="starcoder15b")
    assert [r.label for r in by_experiment.runs] == ["sc-qlora", "sc-full"]  # launch order; one experiment: bare names
    assert [r.label for r in by_experiment.groups[0].runs] == ["sc-full", "sc-qlora"]  # a pair: full first
    union = collect(root, ["tiny-lora"], experiment="starcoder15b")
    assert {r.name for r in union.runs} == {"sc-full", "sc-qlora", "tiny-lora"}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_one_png_per_group_with_three_panels(written: dict[str, Any], store: tuple[Path, dict[str, str]]) -> None:
    root, _ = store
    plots = {g["slug"]: Path(g["plot"]) for g in written["groups"]}
    assert set(plots) == {f"starcoder15b-{DATA[:8]}", "tiny-lora"}
    for slug, path in plots.items():
        assert path.parent == root / "compare" and re.fullmatch(rf"\d{{8}}-\d{{6}}-{slug}\.png", path.name), path
        width, height = png_size(path)
        assert width > 2.5 * height and height > 400 and path.stat().st_size > 20_000
    pair = collect(root, experiment="starcoder15b").groups[0]
    axes = figure(pair).axes
    assert [ax.get_title() for ax in axes] == ["Eval loss", "Train loss", "Learning rate (log scale)"]  # 5e-5, 5e-4
    assert all(ax.get_xlabel() == "step" for ax in axes)
    runs_drawn = [[line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")] for ax in axes]
    assert runs_drawn == [["sc-full (full)", "sc-qlora (qlora)"]] * 3  # one line per run (plus a star: best eval)
    legend = [text.get_text() for text in figure(pair).legends[0].get_texts()]
    assert legend == ["sc-full (full)", "sc-qlora (qlora)", "best eval loss"]


def test_plots_are_against_tokens_seen_when_runs_say_their_tokens_per_step(store: tuple[Path, dict[str, str]]) -> None:
    """Full FT at 4× the tokens per step of QLoRA: at the same step it has seen 4× the data, and the plot says so."""
    root, _ = store
    pair = collect(root, experiment="starcoder15b").groups[0]
    full, qlora = pair.runs
    full.tags["clusterft.tokens_per_step"], qlora.tags["clusterft.tokens_per_step"] = "4096", "1024"
    full.tags["clusterft.data_name"] = qlora.tags["clusterft.data_name"] = "hf-stack-v1"
    axes = figure(pair).axes
    assert all(ax.get_xlabel() == "tokens seen" for ax in axes)
    full_line, qlora_line = (line for line in axes[0].get_lines() if not line.get_label().startswith("_"))
    assert list(full_line.get_xdata()) == [100 * 4096, 200 * 4096, 300 * 4096, 400 * 4096]
    assert list(qlora_line.get_xdata()) == [100 * 1024, 200 * 1024, 300 * 1024, 400 * 1024]
    assert all(ax.get_xlabel() == "step" for ax in figure(pair, "step").axes)
    assert [ax.get_ylabel() for ax in axes] == ["eval loss (nats/token)", "train loss (nats/token)", "learning rate"]
    from launchers.compare.data import group

    assert group(pair.runs)[0].title == "starcoder15b, data hf-stack-v1: full vs qlora"  # the data by its name


def test_comparing_the_same_runs_again_logs_nothing_new(store: tuple[Path, dict[str, str]]) -> None:
    from mlflow.tracking import MlflowClient

    root, ids = store
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    before = [f.path for f in client.list_artifacts(ids["sc-full"], "compare")]
    for _ in range(2):
        compare(root, ["sc-full", "sc-qlora"], fmt="json")
    after = [f.path for f in client.list_artifacts(ids["sc-full"], "compare")]
    assert len(after) <= len(before) + 1  # one new folder at most: this comparison's, logged once


def test_table_and_group_png_are_artifacts_of_each_parent(written: dict[str, Any],
                                                          store: tuple[Path, dict[str, str]],
                                                          tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    root, ids = store
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    folder = written["artifacts"]
    assert folder.startswith("compare/")
    pair_png = Path(written["groups"][0]["plot"]).name
    for run in ("sc-full", "sc-qlora"):
        names = {Path(f.path).name for f in client.list_artifacts(ids[run], folder)}
        assert names == {"compare.txt", "compare.csv", pair_png}
    local = Path(client.download_artifacts(ids["sc-qlora"], f"{folder}/compare.txt", str(tmp_path)))
    assert "full vs qlora" in local.read_text() and "tiny-lora" in local.read_text()
    tiny = {Path(f.path).name for f in client.list_artifacts(ids["tiny-lora"], folder)}
    assert tiny == {"compare.txt", "compare.csv", Path(written["groups"][1]["plot"]).name}


def test_output_flag_names_the_png(store: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, _ = store
    target = tmp_path / "plots" / "cmp.png"
    text = compare(root, ["sc-full", "sc-qlora"], output=target)
    assert f"plot: {target}" in text and png_size(target)[0] > 1000
    assert "logged to 2 parent run(s) as compare/" in text


@pytest.mark.parametrize(
    ("refs", "experiment", "says"),
    [
        (["nope"], None, "no run 'nope' under"),
        (["untracked"], None, "run tiny-starcoder/untracked has no mlflow.json"),
        ([], "missing", "flag --experiment missing: no such MLflow experiment"),
    ],
)
def test_user_errors_are_one_line(store: tuple[Path, dict[str, str]], refs: list[str], experiment: str | None,
                                  says: str) -> None:
    root, _ = store
    with pytest.raises(UserError) as caught:
        compare(root, refs, experiment, write=False)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_no_store_and_empty_experiment(tmp_path: Path, store: tuple[Path, dict[str, str]]) -> None:
    with pytest.raises(UserError, match="no MLflow store at .*mlflow.db: nothing has been tracked"):
        compare(tmp_path / "empty", write=False)
    from mlflow.tracking import MlflowClient

    root, _ = store
    MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").create_experiment("empty-experiment")
    with pytest.raises(UserError, match="nothing to compare: experiment empty-experiment has no clusterft runs"):
        compare(root, experiment="empty-experiment", write=False)


def test_unreachable_tracking_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:secret@127.0.0.1:{port}")
    with pytest.raises(UserError) as caught:
        compare(tmp_path, write=False)
    message = str(caught.value)
    assert message.startswith(f"MLflow tracking server http://127.0.0.1:{port} is unreachable")
    assert "secret" not in message and "\n" not in message


def test_bad_format(store: tuple[Path, dict[str, str]]) -> None:
    with pytest.raises(UserError, match="flag --format xml: allowed: csv, json, text"):
        compare(store[0], fmt="xml")


def test_importing_compare_loads_neither_mlflow_nor_matplotlib() -> None:
    code = "import sys, launchers.compare; print(sorted(m for m in ('mlflow', 'matplotlib') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == "[]"


def test_launch_compare_command(store: tuple[Path, dict[str, str]], launch: Any) -> None:
    from tests.unit.launch_harness import assert_one_error_line

    root, _ = store
    result = launch("compare", "sc-full", "sc-qlora", "--runs-dir", str(root), "--format", "csv", "--print-only")
    assert result.code == 0 and [r["run"] for r in csv.DictReader(io.StringIO(result.out))] == ["sc-full", "sc-qlora"]
    result = launch("compare", "--runs-dir", str(root), "--experiment", "starcoder15b")
    assert result.code == 0 and "full vs qlora (sc-full vs sc-qlora)" in result.out and "plot: " in result.out
    line = assert_one_error_line(launch("compare", "nope", "--runs-dir", str(root)))
    assert "no run 'nope' under" in line
    assert "invalid choice: 'xml'" in assert_one_error_line(launch("compare", "--format", "xml"))


def test_a_file_that_is_not_an_mlflow_store(tmp_path: Path) -> None:
    (tmp_path / "mlflow.db").write_text("not a database")
    with pytest.raises(UserError, match=r"MLflow at sqlite:///.*mlflow.db: .*file is not a database$"):
        compare(tmp_path, write=False)


def summary(name: str, method: str, model_name: str = "m", data: str = "d") -> Any:
    from launchers.compare.data import RunSummary

    tags = {"clusterft.method": method, "clusterft.model_name": model_name, "clusterft.data": data}
    return RunSummary("e", name, f"id-{name}", "FINISHED", {k: v for k, v in tags.items() if v}, label=name)


def test_grouping_rules() -> None:
    from launchers.compare.data import group

    runs = [summary("q", "qlora"), summary("x", "full", data=""), summary("f", "full"), summary("l", "lora"),
            summary("q2", "qlora", data="other"), summary("q3", "qlora", data="other")]
    same, same_method, others = group(runs)
    assert [r.name for r in same.runs] == ["f", "l", "q"] and same.title == "m, data d: full vs lora vs qlora"
    assert [(d.a.name, d.b.name) for d in same.deltas] == [("f", "l"), ("f", "q"), ("l", "q")]
    assert [r.name for r in same_method.runs] == ["q2", "q3"] and same_method.deltas == []  # one method: no pair
    assert [r.name for r in others.runs] == ["x"] and not others.paired  # no data fingerprint: never grouped
    assert others.slug == "x" and others.plot_title == "x (?)"


def test_an_artifact_store_failure_is_a_warning(store: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient

    import launchers.compare as module

    def refuse(*_: Any, **__: Any) -> None:
        raise PermissionError("s3: access denied")

    monkeypatch.setattr(module, "write_plots", lambda *_: {})
    monkeypatch.setattr(MlflowClient, "log_artifact", refuse)
    text = compare(store[0], ["sc-full"])
    assert "sc-full" in text and "logged to" not in text
    assert capsys.readouterr().err == ("warning: could not log the comparison to the parent runs: "
                                       "s3: access denied\n")


def test_without_mlflow_the_error_names_the_extra(store: tuple[Path, dict[str, str]],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    root, _ = store
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)  # a login node with the launcher only
    with pytest.raises(UserError, match=r"the track extra: pip install -e '\.\[track\]' \(here: mlflow\.tracking"):
        compare(root)


def test_the_text_ends_with_where_mlflows_ui_shows_the_summaries(store: tuple[Path, dict[str, str]]) -> None:
    root, _ = store
    last = compare(root, ["sc-full", "sc-qlora"], write=False).splitlines()[-1]
    assert re.fullmatch(r"in MLflow's UI: launch mlflow-server, then open http://127\.0\.0\.1:5000/#/experiments/"
                        r"\d+/runs\?viewStateShareKey=clusterft&workflowType=machine_learning", last), last


def test_the_base_row_needs_the_runs_to_agree_on_the_base() -> None:
    from launchers.compare.data import Group, RunSummary

    def run(name: str, base_loss: float | None) -> RunSummary:
        metrics = {"eval/heldout_loss": 3.0, **({"eval/base_heldout_loss": base_loss} if base_loss else {})}
        return RunSummary("e", name, name, "FINISHED", {"clusterft.method": name}, eval_metrics=metrics)

    agreeing = Group("m, data d: full vs lora", "m", [run("full", 4.0), run("lora", 4.0), run("qlora", None)], True)
    assert agreeing.base_metrics() == {"heldout_loss": 4.0}
    assert Group("m", "m", [run("full", 4.0), run("lora", 4.5)], True).base_metrics() is None  # other held-out data
    assert Group("other runs", "o", [run("full", 4.0)], False).base_metrics() is None
