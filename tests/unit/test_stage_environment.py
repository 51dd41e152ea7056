"""What a stage's rank sees of torch.distributed and of the node's GPUs, from submitit's environment (here the
local executor's variables, as its rank 1 of 2 gets them), and which installed modules it leaves out.

    .venv/bin/python -m pytest tests/unit/test_stage_environment.py -q
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launchers.recipe.load import resolve
from launchers.submit.stage import export_torch_distributed

ROOT = Path(__file__).resolve().parents[2]

EXPORTED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def test_every_gpu_of_the_node_stays_visible_and_rank_r_takes_cuda_r(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in EXPORTED:  # unset for export(), and put back as they were afterwards (setenv records the original)
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    for key, value in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "4242", "SUBMITIT_LOCAL_NTASKS": "2",
                       "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0",
                       "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1",
                       "CUDA_VISIBLE_DEVICES": "0,1"}.items():
        monkeypatch.setenv(key, value)
    env = export_torch_distributed()
    assert (env.rank, env.local_rank, env.world_size) == (1, 1, 2)
    assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"]) == ("1", "1", "2")
    # not narrowed to "1": with one GPU visible, cuda:1 (accelerate's device for LOCAL_RANK 1) would not exist
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_slurm_values_win_over_what_a_container_hook_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    """enroot/pyxis's PyTorch hook sets a one-node world in every task; the job's own values must replace it."""
    hook = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29500"}
    slurm = {"SLURM_JOB_ID": "777", "SLURM_NTASKS": "16", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
             "SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_STEP_NODELIST": "",
             "SUBMITIT_EXECUTOR": "slurm"}
    for key, value in {**hook, **slurm}.items():
        monkeypatch.setenv(key, value)
    env = export_torch_distributed()
    exported = {key: os.environ[key] for key in EXPORTED}
    assert exported["RANK"] == "9" and exported["WORLD_SIZE"] == "16" and exported["LOCAL_RANK"] == "1"
    assert exported["LOCAL_WORLD_SIZE"] == "8" and exported["MASTER_ADDR"] == "gpu07"
    assert 20000 <= env.master_port <= 60000 and exported["MASTER_PORT"] == str(env.master_port) != "29500"


@pytest.mark.parametrize(("method", "overrides", "uses"), [
    ("qlora", [], True),
    ("lora", [], False),
    ("full-ft", [], False),
    ("lora", ["training.optimizer=paged_adamw_8bit"], True),
    ("full-ft", ["training.optimizer=adamw_8bit"], True),
])
def test_only_4_bit_bases_and_8_bit_optimizers_use_bitsandbytes(method: str, overrides: list[str], uses: bool) -> None:
    assert resolve(method, "tiny-starcoder", overrides).recipe.uses_bitsandbytes is uses


def test_a_module_left_out_looks_not_installed_unless_already_imported() -> None:
    """What PEFT and transformers ask before importing bitsandbytes (find_spec), and what their guarded imports
    catch (ImportError), in a fresh interpreter; a module some earlier code imported stays as it was."""
    probe = ("import importlib.util, json, sys\n"
             "from jobs.spec.imports import leave_out\n"
             "leave_out('json'); leave_out('wave')\n"
             "try:\n    import wave\n    outcome = 'imported'\nexcept ImportError:\n    outcome = 'ImportError'\n"
             "print(importlib.util.find_spec('wave'), outcome, sys.modules['json'] is json)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["None", "ImportError", "True"]
