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


def launch_fsdp(tmp_path: Path, method: str, model: str, *overrides: str) -> Path:
    path = os.pathsep.join(filter(None, [str(SHIM), os.environ.get("PYTHONPATH")]))
    result = launch(method, model, "--local", "--nproc", "2", "--name", "fsdp", "--stages", "train",
                    "distributed.backend=fsdp", *overrides, cwd=tmp_path, env={"PYTHONPATH": path})
    assert_ok(result)
    assert "2 rank(s), FSDP" in result.stdout, result.stdout
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
    run = launch_fsdp(tmp_path, "full-ft", "tiny-starcoder")  # tied embeddings: lm_head is wte
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
    run = launch_fsdp(tmp_path, "qlora", "tiny-llama", "method.quantization.storage_dtype=float32")
    from peft import AutoPeftModelForCausalLM

    last = shards(run, 30)  # the adapter only: the Trainer saves LoRA weights alone under FSDP
    assert any(torch.count_nonzero(t) for k, t in last.items() if "lora_B" in k)
    assert_same(run / "final" / "adapter_model.safetensors", last)
    assert AutoPeftModelForCausalLM.from_pretrained(run / "final").num_parameters() > 0

    exported = export_checkpoint(tmp_path, 15)  # the adapter, and the model it merges into the 16-bit base
    assert_same(exported / "adapter" / "adapter_model.safetensors", shards(run, 15))
    assert (exported / "model" / "model.safetensors").exists()
