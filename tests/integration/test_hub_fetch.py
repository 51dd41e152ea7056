"""A pretrained hub model through the whole path, against a real HTTP stand-in of the hub on loopback: the launcher
pins the revision, the prepare stage fetches each file once into the cache, and train (2 ranks) and export run
offline: no request reaches the hub after the prepare stage. The planner's estimate travels with the run (plan.json,
the MLflow parent run).

    .venv/bin/python -m pytest tests/integration/test_hub_fetch.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.hub_standin import HubStandIn, files_of
from tests.integration.conftest import assert_ok, launch

ROOT = Path(__file__).resolve().parents[2]
REPO = "org/tiny-starcoder"


def tiny_pretrained(directory: Path) -> Path:
    """The tiny StarCoder, saved as a hub repo holds it: weights, config and its own tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ROOT / "recipes/tiny-starcoder/config.json"))
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(ROOT / "recipes/assets/tokenizer").save_pretrained(directory)
    return directory


def test_prepare_fetches_once_and_later_stages_run_offline(tmp_path: Path) -> None:
    with HubStandIn() as hub:
        sha = hub.add_model(REPO, files_of(tiny_pretrained(tmp_path / "model")))
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": ""}
        result = launch("lora", "tiny-starcoder", "model.init=pretrained", f"model.name_or_path={REPO}",
                        "model.tokenizer=null", "training.max_steps=2", "--local", "--nproc", "2",
                        "--stages", "prepare,train,export", "--name", "hub", cwd=tmp_path, env=env)
        assert_ok(result)
    run = tmp_path / "runs" / "tiny-starcoder" / "hub"
    assert f"revision: {sha}" in (run / "recipe.yaml").read_text()  # pinned at launch, read by every stage

    fetched = hub.downloads()
    assert set(fetched) == {f"/{REPO}/resolve/{sha}/{name}" for name in hub.repos[REPO].files}
    assert set(fetched.values()) == {1}, f"a file was fetched more than once: {fetched}"
    train_started = min(a["started"] for a in map(json.loads, (run / "attempts.jsonl").read_text().splitlines())
                        if a["stage"] == "train")
    late = [(method, path) for when, method, path in hub.requests if when >= train_started]
    assert not late, f"stages after prepare reached the hub: {late}"
    estimate = json.loads((run / "plan.json").read_text())["estimate"]  # the planner's figures travel with the run
    assert estimate["feasible"] and estimate["device"] == "cpu" and estimate["per_gpu_gb"]["total"] > 0
    from mlflow.tracking import MlflowClient

    parent = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}").get_run(
        json.loads((run / "mlflow.json").read_text())["parent"])
    assert parent.data.params["planned_verdict"] == "fits"
    assert (run / "final" / ".complete").exists()
    assert list(run.glob("export/v*/model/*.safetensors")), "the export found no base to merge into"
