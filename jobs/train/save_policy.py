"""When the train stage saves, and what a checkpoint holds at 15B scale.

    trainer.add_callback(TimedSaves(recipe.training.save_every_minutes))   # also save by wall time
    class RunTrainer(SFTTrainer): ...                                       # checkpoints without the 16-bit gather

**By wall time** (`training.save_every_minutes`), as well as every `training.save_steps`: what a preemption or a
node failure can cost is then bounded in minutes whatever the step time. A ZeRO-3 or FSDP save is collective, and
every rank's clock differs: rank 0 decides and broadcasts its decision after each optimizer step, so every rank
saves at the same step (ranks that disagreed would wait for each other forever). The last step is left to the
final save.

**Without the 16-bit gather.** Under DeepSpeed ZeRO-3 a full fine-tune's checkpoint is DeepSpeed's own per-rank
shards (fp32 master weights and Adam moments: what a resume needs, ~12 bytes per parameter). The Trainer would also
gather the whole 16-bit model onto rank 0 and write it beside them at every save (StarCoder-15B: 31 GB more per
checkpoint, and the whole model in rank 0's CPU memory). Checkpoints skip that gather and get the model's config
and tokenizer instead; `launch export --checkpoint N` consolidates the shards (jobs.export.consolidate). The final
save still gathers (`stage3_gather_16bit_weights_on_model_save: true`), once. Adapters (LoRA under ZeRO-3) are
gathered as before: they are small, and the verification reads them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from jobs.train.fsdp_state import describe_checkpoint


class TimedSaves(TrainerCallback):
    """Ask for a save once `minutes` of wall time have passed since the last one (or the start), by rank 0's clock."""

    def __init__(self, minutes: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = minutes * 60
        self.clock = clock
        self.since = clock()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.since = self.clock()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.since = self.clock()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        due = self.clock() - self.since >= self.interval_s
        if rank_zero_says(due) and state.global_step < state.max_steps:
            control.should_save = True


def rank_zero_says(decision: bool) -> bool:
    """Rank 0's `decision`, on every rank (itself alone when there is no process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return decision
    on_gpu = torch.distributed.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    flag = torch.tensor([int(decision)], dtype=torch.int32, device=device)
    torch.distributed.broadcast(flag, src=0)
    return bool(flag.item())


class RunTrainer(SFTTrainer):
    """TRL's SFTTrainer, whose ZeRO-3 full fine-tune checkpoints are DeepSpeed's shards without a 16-bit copy."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if _internal_call and self._shards_hold_the_model():
            if self.args.should_save and output_dir is not None:
                describe_checkpoint(Path(output_dir), self.accelerator.unwrap_model(self.model),
                                    self.processing_class)
            return  # the DeepSpeed checkpoint saved next, with the optimizer, holds the weights
        super().save_model(output_dir, _internal_call)

    def _shards_hold_the_model(self) -> bool:
        if not self.is_deepspeed_enabled or getattr(self.model, "peft_config", None):
            return False
        return self.deepspeed.config.get("zero_optimization", {}).get("stage") == 3
