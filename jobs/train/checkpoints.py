"""Checkpoints that are complete or invisible, and adapters that are verified after every save.

The Trainer writes checkpoint-N/ in place; a job killed mid-save (preemption, a node failure, kill -9) leaves a
partial directory that "the newest checkpoint" would pick up. So after every save all ranks meet at a barrier,
rank 0 verifies what was written and only then drops a `.complete` marker in it, recording each file's size and a
sample hash (jobs.spec.manifest). Resume removes unmarked checkpoints and takes the newest marked one that still
holds what it recorded; a newer one that does not (a truncated file, a disk fault) is set aside, with a line saying
why.

Adapter verification (LoRA/QLoRA): the file (under FSDP: the sharded model directory) is there, it holds every
LoRA weight the model trains, at its full (unsharded) shape, and lora_B is not all zero once an optimizer step has
run — upstream has shipped empty or rank-0-only adapters under ZeRO-3/FSDP more than once.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from jobs.spec.manifest import mark_complete, verify
from jobs.spec.rundir import COMPLETE_MARKER
from jobs.train.fsdp_state import describe_checkpoint, load_sharded, sharded_model

_STEP = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint directory, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if p.is_dir() and (m := _STEP.match(p.name))]
    return sorted(found)


def latest_verified(directory: Path) -> tuple[Path | None, list[tuple[str, str]]]:
    """The newest complete checkpoint that still holds what was marked (jobs.spec.manifest), and the newer complete
    ones passed over: (name, why)."""
    passed: list[tuple[str, str]] = []
    for _, path in reversed(checkpoints(directory)):
        if not (path / COMPLETE_MARKER).exists():
            continue
        problem = verify(path)
        if problem is None:
            return path, passed
        passed.append((path.name, problem))
    return None, passed


def set_aside(directory: Path, name: str) -> Path:
    """Move a checkpoint that failed verification out of the way (kept, never deleted: the next save of its step
    must not write into it)."""
    aside = directory / f"{name}.unverified-{int(time.time())}"
    os.replace(directory / name, aside)
    return aside


def remove_incomplete(directory: Path) -> list[str]:
    """Delete checkpoint directories a crash left unfinished; returns their names."""
    removed = []
    for _, path in checkpoints(directory):
        if not (path / COMPLETE_MARKER).exists():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def expected_adapter_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Trainable LoRA weights of a PEFT model by the name PEFT saves them under, at their full shape (ZeRO-3
    keeps the full shape in `ds_shape`)."""
    shapes = {}
    for name, param in model.named_parameters():
        if param.requires_grad and is_lora_weight(name):
            saved = re.sub(r"\.(default)\.", ".", name)  # PEFT drops the adapter name when saving
            shapes[saved] = tuple(getattr(param, "ds_shape", param.shape))
    return shapes


def is_lora_weight(name: str) -> bool:
    return "lora_" in name


def saved_adapter(path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The adapter a checkpoint holds, by PEFT's names: adapter_model.safetensors, or under FSDP's sharded state
    dict (where the Trainer writes no adapter file) the LoRA weights of its sharded model directory, read alone:
    whatever else the shards hold (a QLoRA's 4-bit base, were it saved) stays on disk."""
    from safetensors import safe_open

    weights = path / "adapter_model.safetensors"
    if not weights.exists() and (sharded := sharded_model(path)) is not None:
        return sharded, load_sharded(sharded, keep=is_lora_weight)
    if not weights.exists():
        raise RuntimeError(f"adapter check: {weights} was not written")
    with safe_open(str(weights), framework="pt") as handle:
        return weights, {key: handle.get_tensor(key) for key in handle.keys()}


def verify_adapter(path: Path, expected: dict[str, tuple[int, ...]], trained: bool) -> None:
    """Raise if the adapter at `path` is missing, incomplete, sharded or (after training) still all-zero."""
    weights, saved = saved_adapter(path)
    missing = sorted(set(expected) - set(saved))
    if missing or not saved:
        raise RuntimeError(f"adapter check: {weights} lacks {len(missing)} of {len(expected)} LoRA weights, "
                           f"e.g. {missing[:3]}")
    for key, shape in expected.items():
        if tuple(saved[key].shape) != shape:
            raise RuntimeError(f"adapter check: {key} saved with shape {tuple(saved[key].shape)}, "
                               f"expected {shape} (a shard instead of the full weight?)")
    if trained and all(torch.count_nonzero(t) == 0 for k, t in saved.items() if "lora_B" in k):
        raise RuntimeError(f"adapter check: every lora_B in {weights} is zero after training: the adapter is empty")


class CompleteCheckpoints(TrainerCallback):
    """After each save: barrier, verify (adapters), then mark the checkpoint complete (rank 0)."""

    def __init__(self, expected_adapter: dict[str, tuple[int, ...]] | None) -> None:
        self.expected_adapter = expected_adapter

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        if not state.is_world_process_zero:
            return
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if sharded_model(path) is not None:
            describe_checkpoint(path, kwargs["model"], kwargs.get("processing_class"))
        if self.expected_adapter is not None:
            verify_adapter(path, self.expected_adapter, trained=state.global_step > 0)
        mark_complete(path, f"step {state.global_step}")
