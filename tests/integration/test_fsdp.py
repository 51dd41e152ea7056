"""FSDP and FSDP-QLoRA on 2 CPU ranks through `launch --local`, with real sharding over gloo.

Stock accelerate runs an FSDP config as plain DDP on CPU; a test-only shim (tests/shims/fsdp_on_cpu, put on every
rank's PYTHONPATH) lifts that. The train job is unchanged and itself refuses to run anything but FSDP when the recipe
asks for it; the tests also read the distributed type it reports. Intermediate checkpoints are sharded
(SHARDED_STATE_DICT); the final model or adapter is the full one, equal to the last checkpoint's shards, and an
exported checkpoint equals what accelerate's own merge-weights makes of it.

    .venv/bin/python -m pytest tests/integration/test_fsdp.py -q
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from jobs.train.fsdp_state import load_sharded, sharded_model
from tests.integration.conftest import assert_ok, launch

SHIM = Path(__file__).parents[1] / "shims" / "fsdp_on_cpu"
ROOT = Path(__file__).resolve().parents[2]


def launch_fsdp(tmp_path: Path, method: str, model: str, *overrides: str, version: int) -> Path:
    path = os.pathsep.join(filter(None, [str(SHIM), os.environ.get("PYTHONPATH")]))
    result = launch(method, model, "--local", "--nproc", "2", "--name", "fsdp", "--stages", "train",
                    "distributed.backend=fsdp", *overrides, cwd=tmp_path, env={"PYTHONPATH": path})
    assert_ok(result)
    # the version the plan asked for, as the Trainer's FSDP plugin reports it (the job refuses any other)
    assert f"2 rank(s), FSDP (FSDP{version})" in result.stdout, result.stdout
    run = tmp_path / "runs" / model / "fsdp"
    assert (run / "final" / ".complete").exists()
    assert not (run / "final" / ".fsdp-shards").exists()
    return run


def shards(run: Path, step: int) -> dict[str, torch.Tensor]:
    sharded = sharded_model(run / "checkpoints" / f"checkpoint-{step}")
    assert sharded is not None, f"checkpoint-{step} is not a sharded FSDP checkpoint"
    assert len(list(sharded.glob("*.distcp"))) == 2  # one shard file per rank
    return load_sharded(sharded)


def assert_same(path: Path, expected: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import load_file

    saved = load_file(path)
    assert set(saved) == set(expected) and all(torch.equal(saved[k], expected[k]) for k in saved), path


def export_checkpoint(tmp_path: Path, step: int) -> Path:
    """`launch export fsdp --checkpoint STEP`: an intermediate checkpoint exported while it is still sharded."""
    assert_ok(launch("export", "fsdp", "--checkpoint", str(step), cwd=tmp_path))
    (version,) = (tmp_path / "runs").glob("*/fsdp/export/v1")
    assert not (version / ".consolidated").exists()
    return version


def test_fsdp_full_fine_tune_saves_the_whole_model(tmp_path: Path) -> None:
    run = launch_fsdp(tmp_path, "full-ft", "tiny-starcoder", version=2)  # tied embeddings: lm_head is wte
    from transformers import AutoModelForCausalLM

    last = shards(run, 30)
    assert_same(run / "final" / "model.safetensors", last)
    reloaded = AutoModelForCausalLM.from_pretrained(run / "final")
    assert torch.equal(reloaded.lm_head.weight, last["transformer.wte.weight"])

    exported = export_checkpoint(tmp_path, 15) / "model"
    assert_same(exported / "model.safetensors", shards(run, 15))
    assert AutoModelForCausalLM.from_pretrained(exported).num_parameters() > 0

    from accelerate.utils import merge_fsdp_weights  # the reference tool (`accelerate merge-weights`)
    from safetensors.torch import load_file

    merge_fsdp_weights(str(sharded_model(run / "checkpoints" / "checkpoint-15")), str(tmp_path / "reference"),
                       safe_serialization=True)
    assert_same(exported / "model.safetensors", load_file(tmp_path / "reference" / "model.safetensors"))


def test_fsdp_qlora_saves_a_verified_adapter(tmp_path: Path) -> None:
    # FSDP-QLoRA stores the 4-bit weights as the model dtype (float32 for the tiny model) so FSDP can shard them.
    # QLoRA defaults to FSDP1; on CPU, FSDP1 over bitsandbytes' 4-bit layers fails in the forward (a bf16 × fp32
    # matmul), so this CPU run asks for FSDP2. FSDP1-QLoRA is checked on a GPU (bench/gpu/acceptance.py).
    run = launch_fsdp(tmp_path, "qlora", "tiny-llama", "method.quantization.storage_dtype=float32",
                      "distributed.fsdp_version=2", version=2)
    from peft import AutoPeftModelForCausalLM

    last = shards(run, 30)  # the adapter only: the Trainer saves LoRA weights alone under FSDP
    assert any(torch.count_nonzero(t) for k, t in last.items() if "lora_B" in k)
    assert_same(run / "final" / "adapter_model.safetensors", last)
    assert AutoPeftModelForCausalLM.from_pretrained(run / "final").num_parameters() > 0

    exported = export_checkpoint(tmp_path, 15)  # the adapter, and the model it merges into the 16-bit base
    assert_same(exported / "adapter" / "adapter_model.safetensors", shards(run, 15))
    assert (exported / "model" / "model.safetensors").exists()


def test_fsdp1_is_what_runs_when_the_recipe_asks_for_it(tmp_path: Path) -> None:
    """transformers 5 takes FSDP2 unless told: the version reaches the Trainer's plugin, which the job checks. FSDP1
    refuses sync_module_states and RAM-efficient loading on CPU (FSDP2 ignored them): the shipped config with both
    off, as a CPU site would write it."""
    config = (ROOT / "recipes" / "accelerate" / "fsdp.yaml").read_text()
    cpu_config = tmp_path / "fsdp_cpu.yaml"
    cpu_config.write_text(config.replace("fsdp_cpu_ram_efficient_loading: true", "fsdp_cpu_ram_efficient_loading: false")
                          .replace("fsdp_sync_module_states: true", "fsdp_sync_module_states: false"))
    run = launch_fsdp(tmp_path, "full-ft", "tiny-starcoder", "distributed.fsdp_version=1",
                      f"distributed.accelerate_config={cpu_config}", version=1)
    assert (run / "final" / "model.safetensors").exists()
