"""Real training on this CPU through `launch --local`: full FT, LoRA and QLoRA of the tiny models, 1 and 2 ranks.

Each run is a real submitit LocalExecutor job (one process per rank, gloo), logs to the embedded sqlite MLflow
store, and leaves a final model or adapter that must load offline.

    .venv/bin/python -m pytest tests/integration/test_local_training.py -q
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import assert_ok, launch


def loss_history(runs: Path, run_id: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    return [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")]


def mlflow_runs(runs: Path, experiment: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment}"
    return list(client.search_runs([found.experiment_id]))


@pytest.mark.parametrize(
    ("method", "model", "kind"),
    [
        ("full-ft", "tiny-starcoder", "full"),
        ("lora", "tiny-starcoder", "lora"),
        ("qlora", "tiny-starcoder", "qlora"),
        ("qlora", "tiny-llama", "qlora"),  # chat data, assistant-only loss
    ],
)
def test_local_run_trains_logs_and_reloads(tmp_path: Path, method: str, model: str, kind: str) -> None:
    # The whole chain once (full-ft, each stage forked warm); the other cases run the train stage alone (it prepares
    # the data itself when the cache is missing).
    stages = () if kind == "full" else ("--stages", "train")
    result = launch(method, model, "--local", "--name", "r1", *stages, cwd=tmp_path)
    assert_ok(result)
    run = tmp_path / "runs" / model / "r1"
    final = run / "final"
    assert (final / ".complete").exists()
    assert "step 30/30" in result.stdout
    assert "1 rank(s), NO," in result.stdout, "one rank trains as one process, not DDP over a world of one"

    ids = json.loads((run / "mlflow.json").read_text())
    history = loss_history(tmp_path / "runs", ids["train"])
    steps = [step for step, _ in history]
    assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == 30
    assert history[-1][1] < history[0][1], f"loss did not go down: {history}"

    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    if kind == "full":
        from transformers import AutoModelForCausalLM

        reloaded = AutoModelForCausalLM.from_pretrained(final)
        exported = AutoModelForCausalLM.from_pretrained(run / "export" / "v1" / "model")  # the chained export
        assert all(torch_equal(a, b) for a, b in zip(reloaded.state_dict().values(), exported.state_dict().values(),
                                                     strict=True))
        assert_chained_eval_logged(tmp_path, run, ids["eval"])
        jobs = json.loads((run / "launch.json").read_text())["jobs"]  # one rank each: forked warm by a fork server
        assert sorted(jobs) == ["eval", "export", "prepare", "train"]
        assert all((run / "submitit" / f"{job}_forked.json").exists() for job in jobs.values())
        # prepare may be forked before the server imported its module; the later stages find theirs imported
        warm = [line for line in result.stdout.splitlines() if " s start-up, 0.0 s imports," in line]
        assert {"[train]", "[export]", "[eval]"} <= {line.split()[0] for line in warm}, result.stdout
    else:
        from peft import AutoPeftModelForCausalLM

        reloaded = AutoPeftModelForCausalLM.from_pretrained(final)
        assert (final / "adapter_model.safetensors").exists()
    assert reloaded.num_parameters() > 0
    if model == "tiny-llama" and kind == "qlora":
        export_qlora_into_the_16_bit_base(tmp_path, run)


def assert_chained_eval_logged(tmp_path: Path, run: Path, eval_run_id: str) -> None:
    """The eval stage evaluated the exported model: pass@1 (8 sandboxed problems), FIM and held-out loss of the
    model and its base, in the run directory and on the eval stage's MLflow run."""
    from mlflow.tracking import MlflowClient

    (results,) = (run / "eval").glob("merged-*/results.json")
    record = json.loads(results.read_text())
    assert record["evaluated"].startswith("merged model ") and record["evaluated"].endswith("export/v1/model")
    assert len((results.parent / "humaneval.jsonl").read_text().splitlines()) == 8
    logged = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}").get_run(eval_run_id).data
    metrics = logged.metrics
    assert record["engine"] == logged.tags["clusterft.eval.engine"] == "transformers"  # auto, on a CPU
    assert len((results.parent / "base_fim.jsonl").read_text().splitlines()) == 8  # the base on the same FIM spans
    for name in ("humaneval_pass_at_1", "fim_exact_match", "fim_edit_similarity", "heldout_loss", "base_heldout_loss",
                 "base_fim_edit_similarity"):
        assert metrics[f"eval/{name}"] == pytest.approx(record["metrics"][name])
    assert metrics["eval/heldout_loss"] < metrics["eval/base_heldout_loss"], "training lowered the held-out loss"


def torch_equal(a: Any, b: Any) -> bool:
    import torch

    return torch.equal(a, b)


def export_qlora_into_the_16_bit_base(tmp_path: Path, run: Path) -> None:
    """`launch export` of a QLoRA run merges into the 16-bit base (never the 4-bit one the adapter trained on): its
    logits are PEFT's with the adapter, at weight 0.8, attached to that 16-bit base."""
    assert_ok(launch("export", "r1", "--weight", "0.8", cwd=tmp_path))
    from tests.unit.test_merge import FP32_ATOL, merged_logits, peft_logits

    exported = run / "export" / "v1"
    expected = peft_logits(run / "base", run / "final", scale=0.8)
    import torch

    torch.testing.assert_close(merged_logits(exported / "model"), expected, atol=FP32_ATOL, rtol=0)
    assert json.loads((exported / "export.json").read_text())["adapter_weight"] == 0.8
    parent_id = json.loads((run / "mlflow.json").read_text())["parent"]
    parent = next(r for r in mlflow_runs(tmp_path / "runs", "tiny-llama") if r.info.run_id == parent_id)
    assert parent.data.tags["clusterft.export.path"] == str(exported)


def test_two_cpu_ranks_train_one_run(tmp_path: Path) -> None:
    result = launch("lora", "tiny-llama", "--local", "--nproc", "2", "--name", "ddp2", "--stages", "train",
                    cwd=tmp_path)
    assert_ok(result)
    assert "2 rank(s), MULTI_CPU" in result.stdout  # world size asserted inside the job too
    run = tmp_path / "runs" / "tiny-llama" / "ddp2"
    plan = json.loads((run / "plan.json").read_text())
    assert plan["world_size"] == 2 and plan["gradient_accumulation_steps"] == 1
    train_job = json.loads((run / "launch.json").read_text())["jobs"]["train"]
    logs = sorted(p.name for p in (run / "submitit").glob(f"{train_job}_*_log.out"))
    assert logs == [f"{train_job}_0_log.out", f"{train_job}_1_log.out"]  # one log per rank
    assert not (run / "submitit" / f"{train_job}_forked.json").exists()  # two ranks: started afresh, no fork server
    runs = mlflow_runs(tmp_path / "runs", "tiny-llama")
    train_runs = [r for r in runs if r.data.tags.get("clusterft.stage") == "train"]
    assert len(train_runs) == 1  # only rank 0 talks to MLflow: one train run, not one per rank
    assert (run / "final" / "adapter_model.safetensors").exists()
