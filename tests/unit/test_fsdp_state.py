"""FSDP sharded checkpoints made whole: a torch.distributed.checkpoint directory written in-process stands in for
the ranks' shards (tests/integration/test_fsdp.py writes real ones with 2 ranks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jobs.train.checkpoints import verify_adapter
from jobs.train.fsdp_state import SHARDED_MODEL_DIR, consolidate_checkpoint, load_sharded, sharded_model


def write_sharded(checkpoint: Path, tensors: dict[str, torch.Tensor]) -> None:
    import torch.distributed.checkpoint as dcp

    dcp.save({"model": tensors}, storage_writer=dcp.FileSystemWriter(str(checkpoint / SHARDED_MODEL_DIR)),
             no_dist=True)
    (checkpoint / "trainer_state.json").write_text("{}")


def lora_tensors() -> dict[str, torch.Tensor]:
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    return {f"{prefix}.lora_A.weight": torch.randn(4, 16), f"{prefix}.lora_B.weight": torch.randn(16, 4)}


def test_a_full_model_checkpoint_becomes_a_model_directory(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    tensors = {"model.embed_tokens.weight": torch.randn(32, 16), "lm_head.weight": torch.randn(32, 16).t()}
    write_sharded(tmp_path / "checkpoint-5", tensors)
    (tmp_path / "checkpoint-5" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    consolidate_checkpoint(tmp_path / "checkpoint-5", tmp_path / "out")

    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert saved.keys() == tensors.keys() and all(torch.equal(saved[k], tensors[k]) for k in tensors)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]


def test_an_adapter_checkpoint_becomes_an_adapter_directory_that_verifies(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint-5"
    tensors = lora_tensors()
    write_sharded(checkpoint, tensors)
    (checkpoint / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    expected = {key: tuple(t.shape) for key, t in tensors.items()}
    verify_adapter(checkpoint, expected, trained=True)  # read from the shards: the Trainer wrote no adapter file

    consolidate_checkpoint(checkpoint, tmp_path / "out")
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "out" / "adapter_config.json").is_file()
    verify_adapter(tmp_path / "out", expected, trained=True)


def test_an_empty_sharded_adapter_is_refused(tmp_path: Path) -> None:
    tensors = {key: torch.zeros_like(t) if "lora_B" in key else t for key, t in lora_tensors().items()}
    write_sharded(tmp_path, tensors)
    with pytest.raises(RuntimeError, match="every lora_B .* is zero"):
        verify_adapter(tmp_path, {key: tuple(t.shape) for key, t in tensors.items()}, trained=True)


def test_a_checkpoint_without_shards_is_not_sharded(tmp_path: Path) -> None:
    assert sharded_model(tmp_path) is None
    with pytest.raises(ValueError, match="holds no FSDP sharded model"):
        consolidate_checkpoint(tmp_path, tmp_path / "out")


def test_load_sharded_returns_full_tensors(tmp_path: Path) -> None:
    tensors = lora_tensors()
    write_sharded(tmp_path, tensors)
    loaded = load_sharded(tmp_path / SHARDED_MODEL_DIR)
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def test_verification_reads_the_adapter_alone_whatever_else_the_shards_hold(tmp_path: Path) -> None:
    """A checkpoint holding a 256 MiB base beside its adapter: the LoRA weights come back, the base is never read
    (the memory of a fresh process that read it grows by far less than the base)."""
    import subprocess
    import sys

    from jobs.train.checkpoints import saved_adapter

    base = {"base_model.model.model.layers.0.mlp.weight": torch.ones(64, 1024, 1024)}  # 256 MiB of float32
    write_sharded(tmp_path, {**base, **lora_tensors()})
    _, saved = saved_adapter(tmp_path)
    assert saved.keys() == lora_tensors().keys()

    child = f"""
import sys
from pathlib import Path
from jobs.train.fsdp_state import SHARDED_MODEL_DIR, load_sharded
def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20
before = rss_mib()
loaded = load_sharded(Path({str(tmp_path / SHARDED_MODEL_DIR)!r}),
                      keep=(lambda name: "lora_" in name) if sys.argv[1] == "lora" else None)
print(len(loaded), rss_mib() - before)  # the loaded tensors are still alive
"""
    grown = {}
    for which in ("lora", "all"):
        done = subprocess.run([sys.executable, "-c", child, which], capture_output=True, text=True, timeout=120,
                              check=True)
        count, grown[which] = map(int, done.stdout.split())
        assert count == (2 if which == "lora" else 3)
    # (the reader's own imports are ~50 MiB of either figure)
    assert grown["lora"] < 100 and grown["all"] - grown["lora"] > 200, f"resident growth in MiB: {grown}"
