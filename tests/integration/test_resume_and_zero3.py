"""Checkpoints and DeepSpeed on real CPU ranks.

- A run whose newest checkpoint was cut short after it was marked complete resumes from the previous one.
- A run killed with SIGKILL in the middle of a checkpoint save and continued by `launch resume` reproduces an
  uninterrupted run: the same loss at every step (1e-4) and the same final weights. It resumes from the newest
  *complete* checkpoint; a half-written one is removed.
- DeepSpeed ZeRO-3 full fine-tune on 2 ranks, saving by wall time too: checkpoints hold DeepSpeed's shards without
  a 16-bit gather, the final model is gathered once and equals DeepSpeed's zero_to_fp32 consolidation of the last
  checkpoint, and the export consolidates a checkpoint into the same tensors.
- DeepSpeed ZeRO-3 LoRA on 2 ranks: the saved adapter holds every LoRA weight at full shape, trained (lora_B not
  zero), and reloads offline.

    .venv/bin/python -m pytest tests/integration/test_resume_and_zero3.py -q
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.integration.conftest import assert_ok, launch

STEPS = ["training.max_steps=24", "training.save_steps=8", "training.logging_steps=1", "training.eval_steps=24"]


def loss_history(runs: Path, run: Path) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    run_id = json.loads((run / "mlflow.json").read_text())["train"]
    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    history = client.get_metric_history(run_id, "train/loss")
    steps = [m.step for m in history]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {sorted(steps)}"
    return {m.step: m.value for m in history}


def rank_pids(controller: int, submitit: Path) -> list[int]:
    """The rank processes of a local submitit job: under its controller process, or forked for it by the chain's
    fork server (recorded in <job>_forked.json, launchers/submit/forked_task.py)."""
    import psutil

    forked = submitit / f"{controller}_forked.json"
    ranks = [rank["pid"] for rank in json.loads(forked.read_text())["ranks"]] if forked.exists() else []
    return [child.pid for child in psutil.Process(controller).children(recursive=True)] + ranks


def test_killed_mid_save_then_resumed_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    assert_ok(launch("full-ft", "tiny-starcoder", "--local", "--stages", "train", "--name", "whole", *STEPS,
                     cwd=tmp_path))

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    victim = subprocess.Popen(
        [sys.executable, "-m", "launchers.cli.main", "full-ft", "tiny-starcoder", "--local", "--stages", "train",
         "--name", "killed", *STEPS], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    run = tmp_path / "runs" / "tiny-starcoder" / "killed"
    deadline = time.monotonic() + 600
    target = run / "checkpoints" / "checkpoint-16"
    while not target.exists():  # the second save has begun: kill now, mid-save
        assert victim.poll() is None, victim.stdout.read() if victim.stdout else ""
        assert time.monotonic() < deadline, "no second checkpoint in time"
        time.sleep(0.005)
    controller = int(json.loads((run / "launch.json").read_text())["jobs"]["train"])
    for pid in rank_pids(controller, run / "submitit"):
        os.kill(pid, signal.SIGKILL)
    output, _ = victim.communicate(timeout=300)
    assert victim.returncode == 1, output
    interrupted_complete = (target / ".complete").exists()

    resumed = launch("resume", "killed", cwd=tmp_path)
    assert_ok(resumed)
    expected_from = "checkpoint-16" if interrupted_complete else "checkpoint-8"
    assert f"resuming from {expected_from}" in resumed.stdout, resumed.stdout
    if not interrupted_complete:
        assert "removed incomplete checkpoints left by a crash: checkpoint-16" in resumed.stdout

    whole = loss_history(tmp_path / "runs", tmp_path / "runs" / "tiny-starcoder" / "whole")
    again = loss_history(tmp_path / "runs", run)
    assert sorted(again) == sorted(whole) == list(range(1, 25))
    for step, value in whole.items():
        assert again[step] == pytest.approx(value, abs=1e-4), f"step {step}"
    final_whole = load_file(tmp_path / "runs" / "tiny-starcoder" / "whole" / "final" / "model.safetensors")
    final_again = load_file(run / "final" / "model.safetensors")
    assert final_whole.keys() == final_again.keys()
    for key, tensor in final_whole.items():
        torch.testing.assert_close(final_again[key], tensor, atol=1e-5, rtol=0, msg=key)


def test_a_truncated_newest_checkpoint_resumes_from_the_previous_one(tmp_path: Path) -> None:
    import shutil

    assert_ok(launch("full-ft", "tiny-starcoder", "--local", "--stages", "train", "--name", "cut",
                     "training.max_steps=10", "training.save_steps=5", "training.eval_steps=10", cwd=tmp_path))
    run = tmp_path / "runs" / "tiny-starcoder" / "cut"
    shutil.rmtree(run / "final")  # as if the job had died after its last checkpoint, whose weights a fault cut short
    weights = run / "checkpoints" / "checkpoint-10" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])

    resumed = launch("resume", "cut", "--stages", "train", cwd=tmp_path)  # its job had completed: run it again
    assert_ok(resumed)
    assert "[train] skipped checkpoint-10: model.safetensors: 1000 bytes," in resumed.stdout, resumed.stdout
    assert "resuming from checkpoint-5" in resumed.stdout
    assert (run / "final" / ".complete").exists()
    assert len(list((run / "checkpoints").glob("checkpoint-10.unverified-*"))) == 1  # kept, out of the way
    assert (run / "checkpoints" / "checkpoint-10" / ".complete").exists()  # saved again, whole


def test_zero3_full_fine_tune_saves_what_zero_to_fp32_consolidates(tmp_path: Path) -> None:
    # Saved by wall time too (every step: the interval is 6 ms), at the same step on both ranks, or ZeRO-3's
    # collective save would hang.
    result = launch("full-ft", "tiny-starcoder", "--local", "--nproc", "2", "--stages", "train",
                    "--name", "z3", "distributed.backend=deepspeed-zero3", "training.max_steps=10",
                    "training.save_steps=10", "training.save_every_minutes=0.0001", cwd=tmp_path)
    assert_ok(result)
    assert "2 rank(s), DEEPSPEED" in result.stdout
    run = tmp_path / "runs" / "tiny-starcoder" / "z3"
    checkpoints = sorted((run / "checkpoints").glob("checkpoint-*"))
    assert [p.name for p in checkpoints] == ["checkpoint-10", "checkpoint-9"]  # save_total_limit: 2
    for checkpoint in checkpoints:  # DeepSpeed's shards, the config: no 16-bit gather
        assert (checkpoint / ".complete").exists() and (checkpoint / "config.json").exists()
        assert not list(checkpoint.glob("*.safetensors")), f"{checkpoint.name} holds a gathered 16-bit model"
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints" / "checkpoint-10"))
    saved = load_file(run / "final" / "model.safetensors")
    assert saved, "empty model file"
    for key, tensor in saved.items():
        assert key in consolidated, key
        torch.testing.assert_close(tensor, consolidated[key].to(tensor.dtype), atol=0, rtol=0, msg=key)
    exports_consolidate_the_shards_as_zero_to_fp32_does(tmp_path, run, consolidated, saved)


def exports_consolidate_the_shards_as_zero_to_fp32_does(tmp_path: Path, run: Path, consolidated: dict[str, Any],
                                                        gathered: dict[str, torch.Tensor]) -> None:
    """A final/ saved without the 16-bit gather holds DeepSpeed's per-rank shards only: the export consolidates them
    (jobs.export.consolidate) into the tensors zero_to_fp32 gives, and the gathered save had."""
    import shutil

    shutil.move(run / "final", run / "final-gathered")
    shutil.copytree(run / "checkpoints" / "checkpoint-10", run / "final")
    from jobs.export.stage import export_run
    from jobs.spec.rundir import RunDir
    from launchers.recipe.load import resolve_saved

    done = export_run(RunDir(run), resolve_saved(run / "recipe.yaml").recipe)  # the export stage's work, in-process
    exported = load_file(done.path / "model" / "model.safetensors")
    assert exported.keys() == gathered.keys() and set(consolidated) - set(exported) == {"lm_head.weight"}  # tied
    for key, tensor in exported.items():
        torch.testing.assert_close(tensor, consolidated[key], atol=0, rtol=0, msg=key)
        torch.testing.assert_close(tensor, gathered[key], atol=0, rtol=0, msg=key)


def test_zero3_lora_adapter_is_complete_and_trained(tmp_path: Path) -> None:
    result = launch("lora", "tiny-llama", "--local", "--nproc", "2", "--stages", "train", "--name", "z3l",
                    "distributed.backend=deepspeed-zero3", "training.max_steps=10", "training.save_steps=5",
                    cwd=tmp_path)
    assert_ok(result)
    final = tmp_path / "runs" / "tiny-llama" / "z3l" / "final"
    adapter = load_file(final / "adapter_model.safetensors")
    lora_b = {k: v for k, v in adapter.items() if "lora_B" in k}
    assert len(lora_b) == 8 and all(v.abs().sum() > 0 for v in lora_b.values())  # 2 layers × q, k, v, o
    assert all(v.shape[1] == 8 for v in lora_b.values())  # r = 8, full (unsharded) shapes
    from peft import AutoPeftModelForCausalLM

    assert AutoPeftModelForCausalLM.from_pretrained(final).num_parameters() > 0
