"""`launch compare` on real runs: a full fine-tune and a QLoRA of tiny-starcoder (same model, same data) trained on
this CPU; then `launch mlflow-server` over their store, and MLflow's own compare page of the two launches (their
parent runs: params and summary metrics side by side), rendered by headless Chromium (tests/integration/browser.py).
The screenshot stays in the test's temporary directory (compare-page.png) to look at.

Needs the parent/child MLflow layout from jobs.track.tracker (a parent run per launch tagged clusterft.*, a child run
per stage, the parent id in mlflow.json).

    .venv/bin/python -m pytest tests/integration/test_compare_runs.py -q
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.integration.browser import Browser
from tests.integration.conftest import assert_ok, launch, launch_env
from tests.integration.mlflow_server import free_port


def test_full_ft_and_qlora_of_the_same_model_and_data_are_paired(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for method in ("full-ft", "qlora"):
        assert_ok(launch(method, "tiny-starcoder", "--local", "--name", method, "--stages", "train",
                         cwd=tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from launchers.compare import compare

    root = tmp_path / "runs"
    document = json.loads(compare(root, ["full-ft", "qlora"], fmt="json"))
    (pair,) = document["groups"]
    assert pair["paired"] and pair["runs"] == ["full-ft", "qlora"]
    assert pair["deltas"][0]["methods"] == "full vs qlora" and pair["deltas"][0]["eval_loss_diff"] is not None
    for row in document["runs"]:
        assert row["recipe"].startswith("tiny-starcoder/") and row["steps"] == 30
        assert row["final_eval_loss"] is not None and row["best_eval_loss"] <= row["final_eval_loss"]
        assert row["final_train_loss"] is not None and row["median_tokens_per_s"] > 0
        assert row["gpu_hours"] is None and row["cpu_rank_hours"] > 0  # a CPU run: rank-hours, not GPU-hours
    png = Path(pair["plot"])
    assert png.parent == root / "compare" and png.read_bytes()[:4] == b"\x89PNG"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    for row in document["runs"]:
        logged = {Path(f.path).name for f in client.list_artifacts(row["parent_run_id"], document["artifacts"])}
        assert logged == {"compare.txt", "compare.csv", png.name}

    parents = [row["parent_run_id"] for row in document["runs"]]
    text = compare(root, ["full-ft", "qlora"], fmt="text")
    (link,) = [line.split()[-1] for line in text.splitlines() if line.startswith("in MLflow's UI: ")]
    the_compare_page_shows_the_summaries(tmp_path, root, parents, link)


SUMMARY = ("train_loss", "eval_loss", "best_eval_loss", "tokens_per_s", "cpu_rank_hours", "peak_memory_gb")
COMPARED_PARAMS = ("method", "learning_rate", "global_batch", "seq_length", "nodes_x_ranks", "backend")


def the_compare_page_shows_the_summaries(tmp_path: Path, root: Path, run_ids: list[str], link: str) -> None:
    """`launch mlflow-server` over the runs root, in headless Chromium: MLflow's compare page of the two launches
    names both runs and shows their summary metrics and compared params side by side, and the screenshot is a real
    page (large, many colours), not a blank or error; the experiment's runs table, opened from the link `launch
    compare` prints (its shared view), has the summary columns (experiment-runs.png)."""
    browser = Browser.find_or_install()
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "launchers.cli.main", "mlflow-server", "--host", "127.0.0.1",
                               "--port", str(port), "--runs-dir", str(root)], stdout=log, stderr=subprocess.STDOUT,
                              env=launch_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "up: export MLFLOW_TRACKING_URI" not in (tmp_path / "server.log").read_text():
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.5)
        from mlflow.tracking import MlflowClient

        uri = f"http://127.0.0.1:{port}"
        runs = [MlflowClient(tracking_uri=uri).get_run(run_id) for run_id in run_ids]
        query = urllib.parse.urlencode({"runs": json.dumps(run_ids),
                                        "experiments": json.dumps(sorted({r.info.experiment_id for r in runs}))})
        page = f"{uri}/#/compare-runs?{query}"
        dom = browser.dom(page)
        assert "Comparing 2 Runs" in dom and all(r.info.run_name in dom for r in runs), dom[-2000:]
        missing = [name for name in (*SUMMARY, *COMPARED_PARAMS) if name not in dom]
        assert not missing, f"not on MLflow's compare page: {missing}"
        for run in runs:  # each launch's own value: its train loss, as the page rounds it (3 decimals)
            assert f"{round(run.data.metrics['train_loss'], 3):g}" in dom, run.data.metrics
        table = browser.dom(link.replace("http://127.0.0.1:5000", uri))
        missing = [name for name in (*SUMMARY, "method", "learning_rate") if f">{name}<" not in table]
        assert not missing and all(r.info.run_name in table for r in runs), f"runs table lacks {missing}"
        browser.screenshot(link.replace("http://127.0.0.1:5000", uri), tmp_path / "experiment-runs.png")
        png = browser.screenshot(page, tmp_path / "compare-page.png")
        import matplotlib.image

        pixels = matplotlib.image.imread(png)
        colours = {tuple(p) for p in pixels.reshape(-1, pixels.shape[-1])[::7].round(2).tolist()}
        assert png.stat().st_size > 30_000 and len(colours) > 50, f"{png}: {len(colours)} colours"
    finally:
        os.kill(server.pid, signal.SIGINT)  # launch mlflow-server stops its server's process group
        server.wait(timeout=60)
        log.close()
