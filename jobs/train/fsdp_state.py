"""FSDP's sharded state dicts: save the final model with every rank, read a sharded save back as full tensors.

Under FSDP with `fsdp_state_dict_type: SHARDED_STATE_DICT` (our recipes' choice: no rank ever holds the whole model
while training) the Trainer writes checkpoints as torch.distributed.checkpoint directories
(checkpoint-N/pytorch_model_fsdp_0/: one file per rank plus .metadata) and `Trainer.save_model` writes *no weights
at all*. So the train stage saves its final model here instead:

    from jobs.train.fsdp_state import save_final_model
    save_final_model(trainer, run.final, context)   # every rank; a plain save_model when FSDP is not sharded

All ranks write their shards to <final>/.fsdp-shards/, then rank 0 reads them back as full tensors (the whole model
in its CPU memory: ~2 bytes per parameter in bf16) and writes what any other run writes: model.safetensors and
config.json for a full fine-tune, adapter_model.safetensors and adapter_config.json for LoRA/QLoRA (LoRA keys only,
as PEFT names them). The shards are removed once the model is written.

Intermediate checkpoints stay sharded (that is what resumes); `describe_checkpoint` adds their configs and
tokenizer, and `consolidate_checkpoint` turns one into a model or adapter directory for `launch export --checkpoint`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from jobs.spec.context import RankContext

SHARDED_MODEL_DIR = "pytorch_model_fsdp_0"  # what accelerate's save_fsdp_model writes for the first model
SHARDS_STAGING = ".fsdp-shards"


def load_sharded(directory: Path, keep: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """The full (unsharded) tensors of a torch.distributed.checkpoint model directory, read in this process alone;
    with `keep`, only the tensors whose names it keeps are read (the others' bytes are never touched)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    reader = FileSystemReader(str(directory))
    keys = None
    if keep is not None:
        keys = {key for key in reader.read_metadata().state_dict_metadata if keep(key.removeprefix("model."))}
    loaded: dict[str, Any] = {}
    _load_state_dict(loaded, storage_reader=reader, planner=_EmptyStateDictLoadPlanner(keys=keys), no_dist=True)
    return loaded.get("model", loaded)


def sharded_model(checkpoint: Path) -> Path | None:
    """The sharded model directory of a Trainer checkpoint saved under FSDP, if it is one."""
    path = checkpoint / SHARDED_MODEL_DIR
    return path if (path / ".metadata").exists() else None


def is_sharded_fsdp(trainer: Any) -> bool:
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    return plugin is not None and "SHARDED_STATE_DICT" in str(plugin.state_dict_type)


def save_final_model(trainer: Any, final: Path, context: RankContext) -> None:
    """Every rank: the final model (or adapter) as a Hugging Face directory in `final`, whatever the back end."""
    if not is_sharded_fsdp(trainer):
        trainer.save_model(str(final))
        return
    from accelerate.utils import save_fsdp_model
    from peft import PeftModel

    staging = final / SHARDS_STAGING
    model = trainer.accelerator.unwrap_model(trainer.model)
    is_adapter = isinstance(model, PeftModel)
    save_fsdp_model(trainer.accelerator.state.fsdp_plugin, trainer.accelerator, trainer.model, str(staging),
                    adapter_only=is_adapter)
    trainer.accelerator.wait_for_everyone()
    if context.is_main:
        state_dict = load_sharded(staging / SHARDED_MODEL_DIR)
        model.save_pretrained(str(final), state_dict=state_dict, safe_serialization=True)
        shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()


def describe_checkpoint(checkpoint: Path, model: Any, tokenizer: Any) -> None:
    """Rank 0, after a sharded save: the model's config (a LoRA model's adapter_config.json) and the tokenizer next
    to the shards, which the Trainer leaves out, so that the checkpoint exports like any other."""
    peft_config = getattr(model, "peft_config", None)
    if peft_config:
        peft_config[model.active_adapter].save_pretrained(str(checkpoint))
    else:
        model.config.save_pretrained(str(checkpoint))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(checkpoint))


def consolidate_checkpoint(checkpoint: Path, out: Path) -> None:
    """A sharded checkpoint (described by `describe_checkpoint`) → `out`, a Hugging Face model or adapter directory:
    the full tensors in one safetensors file, and the checkpoint's config and tokenizer files."""
    from safetensors.torch import save_file

    from jobs.common.hf_files import CONFIG_FILES, TOKENIZER_FILES

    sharded = sharded_model(checkpoint)
    if sharded is None:
        raise ValueError(f"{checkpoint} holds no FSDP sharded model ({SHARDED_MODEL_DIR}/)")
    is_adapter = (checkpoint / "adapter_config.json").is_file()
    out.mkdir(parents=True)
    tensors = {key: t.contiguous() for key, t in load_sharded(sharded).items()}
    save_file(tensors, str(out / ("adapter_model.safetensors" if is_adapter else "model.safetensors")),
              metadata={"format": "pt"})
    for name in ("adapter_config.json", *CONFIG_FILES, *TOKENIZER_FILES):
        if (checkpoint / name).is_file():
            shutil.copyfile(checkpoint / name, out / name)
