"""Disk (checkpoints at the recipe's cadence, the final model, the export) and time (step time, communication,
wall time, GPU-hours, cost) of a training run. Bytes and seconds; docs/planning.md explains each.

    disk = disk_use(setup, steps, step_seconds, training)   # Disk
    time = step_time(setup, mfu)                           # StepTime: compute, communication, the step
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from jobs.spec.schema import TrainingSpec
from launchers.planner.setup import Setup

CPU_RANK_FLOPS = 50e9  # a CPU rank (a few AVX2/AVX-512 cores) in fp32: an order of magnitude, stated as such


@dataclass(frozen=True)
class Disk:
    checkpoint: int  # one checkpoint
    saves: int  # checkpoints written over the run
    kept: int  # at most on disk at once (save_total_limit, plus the one being written)
    final: int
    export: int

    @property
    def written(self) -> int:
        return self.saves * self.checkpoint


@dataclass(frozen=True)
class StepTime:
    compute: float
    communication: float
    flops_per_token: float

    @property
    def seconds(self) -> float:
        """Communication overlaps compute (ZeRO-3/FSDP prefetch, DDP's bucketed all-reduce): the slower one sets the
        pace."""
        return max(self.compute, self.communication)


def checkpoint_bytes(setup: Setup) -> int:
    shape = setup.shape
    if setup.kind != "full":  # the adapter (fp32) with its optimizer state
        return int(setup.lora_parameters * (4 + setup.optimizer_bytes(4)))
    if setup.backend == "deepspeed-zero3":
        return 12 * shape.parameters  # fp32 master weights and Adam's moments, every rank's partition (no 16-bit)
    e = setup.weight_bytes
    return int(shape.parameters * (e + setup.optimizer_bytes(e)))  # the weights and the optimizer's states


def disk_use(setup: Setup, steps: int | None, seconds_per_step: float | None, training: TrainingSpec) -> Disk:
    checkpoint = checkpoint_bytes(setup)
    saves = 0
    if steps:
        saves = steps // training.save_steps
        if training.save_every_minutes and seconds_per_step:  # the timer restarts at every save, by steps or time
            between = min(training.save_steps * seconds_per_step, training.save_every_minutes * 60)
            saves = int(steps * seconds_per_step // between)
    kept = min(saves, (training.save_total_limit or saves) + 1)
    whole = setup.shape.parameters * setup.weight_bytes
    final = whole if setup.kind == "full" else 4 * setup.lora_parameters
    export = whole + (final if setup.kind != "full" else 0)  # the merged 16-bit model (and the adapter beside it)
    return Disk(checkpoint, saves, kept, final, export)


def flops_per_token(setup: Setup) -> float:
    """Model FLOPs of one token, as PaLM's appendix B counts them and the train stage's train/mfu does
    (jobs/train/flops.py): 6 per matmul weight and 12·L·H·Q·T for attention, whatever the method. What a method
    saves (LoRA: no weight gradients for the frozen base) or adds (gradient checkpointing: the forward again,
    QLoRA: dequantization) is in its MFU (launchers/planner/estimate.py: mfu_of), so a measured train/mfu plugs in."""
    shape = setup.shape
    return 6.0 * shape.matmul_parameters + 12.0 * shape.layers * shape.heads * shape.head_dim * setup.seq_length


def communication_bytes(setup: Setup) -> float:
    """Bytes of the collectives of one optimizer step, as the size of the tensors they move: ZeRO-3/FSDP all-gather
    the weights for the forward and again for the backward and reduce-scatter the gradients, every micro-batch;
    DDP all-reduces the gradients once per step (an all-reduce moves its data twice: reduce-scatter, all-gather)."""
    if setup.world == 1:
        return 0.0
    trainable = setup.trainable
    if setup.sharded and setup.kind == "full":
        return setup.accumulation * 3 * 2 * setup.shape.parameters
    if setup.sharded:  # a frozen base is gathered too, and has no gradients
        return setup.accumulation * (2 * 2 * setup.shape.parameters + 4 * trainable)
    return 2 * trainable * (2 if setup.kind == "full" else 4)


def communication_seconds(setup: Setup) -> float:
    """At the links' nominal bandwidth (a lower bound): every GPU receives (n-1)/n of each collective's data over
    NVLink; across nodes NCCL's rings forward within a node, so a node takes in (nodes-1)/nodes of it once, over
    its network adapters together."""
    device, world, nodes = setup.device, setup.world, setup.nodes
    if device is None or world == 1:
        return 0.0
    moved = communication_bytes(setup)
    within = moved * (world - 1) / world / (device.intra_node_gbs * 1e9)
    across = moved * (nodes - 1) / nodes / (device.inter_node_gbs * 1e9) if nodes > 1 else 0.0
    return max(within, across)


def step_time(setup: Setup, mfu: float) -> StepTime:
    """Compute at `mfu` of the device's peak (QLoRA's already scaled: `effective_mfu`), and communication."""
    per_token = flops_per_token(setup)
    peak = setup.device.peak_flops if setup.device is not None else CPU_RANK_FLOPS
    compute = setup.tokens_per_step * per_token / (setup.world * peak * mfu)
    return StepTime(compute, communication_seconds(setup), per_token)


def total_steps(training: TrainingSpec, tokens_per_step: int, data_tokens: int | None) -> int | None:
    if training.max_steps:
        return training.max_steps
    if data_tokens is None or training.epochs is None:
        return None
    return max(1, math.ceil(training.epochs * data_tokens / tokens_per_step))
