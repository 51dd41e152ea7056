"""What the planner plans: a recipe and its Plan, reduced to the numbers memory, disk and time depend on.

    setup = Setup.of(recipe, plan, shape, device)   # device: a catalog GPU (jobs.spec.gpus) or CPU
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.spec.gpus import Gpu
from jobs.spec.plan import Plan
from jobs.spec.resources import slurm_minutes
from jobs.spec.schema import Recipe
from launchers.planner.shape import ModelShape

BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "uint8": 1}
GiB = 2**30
# Optimizer states in bytes per trainable parameter of `e` bytes (torch keeps AdamW's two moments in the
# parameter's dtype; bitsandbytes' 8-bit AdamW in one byte each; Adafactor's factored moment is negligible).
OPTIMIZER_STATES = {"adamw_torch": 2.0, "adamw_torch_fused": 2.0, "paged_adamw_32bit": 2.0, "adamw_8bit": 0.0,
                    "paged_adamw_8bit": 0.0, "adafactor": 0.0, "sgd": 0.0}
OPTIMIZER_FIXED = {"adamw_8bit": 2, "paged_adamw_8bit": 2}  # bytes per parameter whatever its dtype


@dataclass(frozen=True)
class Setup:
    shape: ModelShape
    device: Gpu | None  # None: CPU ranks
    kind: str  # full, lora, qlora
    backend: str  # single, ddp, fsdp, deepspeed-zero3
    nodes: int
    ranks_per_node: int
    micro_batch: int
    seq_length: int
    accumulation: int
    tokens_per_step: int
    checkpointing: bool
    eager_attention: bool  # the attention matrix is stored (eager); SDPA and flash attention do not store it
    flash_attention: bool  # flash attention reads multi-query/grouped k and v as they are (others repeat them)
    weight_bytes: int  # model.dtype
    activation_bytes: int  # the compute dtype
    optimizer: str
    lora_parameters: int  # trainable adapter parameters (0 for a full fine-tune)
    double_quant: bool
    zero_offload_optimizer: bool
    zero_offload_params: bool
    zero_max_live: float  # stage3_max_live_parameters: how many gathered parameters ZeRO-3 may keep
    node_memory_gib: float | None  # resources.mem, when it names a size
    time_limit_minutes: int  # the train stage's (resources.time)

    @property
    def world(self) -> int:
        return self.nodes * self.ranks_per_node

    @property
    def sharded(self) -> bool:
        return self.backend in ("fsdp", "deepspeed-zero3") and self.world > 1

    @property
    def trainable(self) -> int:
        return self.shape.parameters if self.kind == "full" else self.lora_parameters

    def optimizer_bytes(self, parameter_bytes: int) -> float:
        return OPTIMIZER_FIXED.get(self.optimizer, OPTIMIZER_STATES.get(self.optimizer, 2.0) * parameter_bytes)

    @classmethod
    def of(cls, recipe: Recipe, plan: Plan, shape: ModelShape, device: Gpu | None) -> Setup:
        lora, quant = recipe.method.lora, recipe.method.quantization
        compute = quant.compute_dtype if quant is not None else recipe.model.dtype
        zero = (plan.deepspeed or {}).get("zero_optimization", {})
        return cls(
            shape=shape, device=device, kind=recipe.method.kind, backend=recipe.distributed.backend,
            nodes=plan.nodes, ranks_per_node=plan.ranks_per_node,
            micro_batch=recipe.training.per_device_batch_size, seq_length=recipe.data.seq_length,
            accumulation=plan.gradient_accumulation_steps, tokens_per_step=plan.tokens_per_step,
            checkpointing=recipe.training.gradient_checkpointing,
            eager_attention=recipe.model.attn_implementation == "eager",
            flash_attention=recipe.model.attn_implementation == "flash_attention_2" and device is not None,
            weight_bytes=BYTES[recipe.model.dtype], activation_bytes=BYTES[compute],
            optimizer=recipe.training.optimizer,
            lora_parameters=shape.lora_parameters(lora.r, lora.target_modules) if lora else 0,
            double_quant=bool(quant and quant.double_quant),
            zero_offload_optimizer=_offloaded(zero, "offload_optimizer"),
            zero_offload_params=_offloaded(zero, "offload_param"),
            zero_max_live=float(zero.get("stage3_max_live_parameters", 1e9)),
            node_memory_gib=memory_gib(recipe.resources.mem),
            time_limit_minutes=slurm_minutes(recipe.resources.time),
        )


def _offloaded(zero: dict[str, Any], key: str) -> bool:
    return str((zero.get(key) or {}).get("device", "none")) == "cpu"


def memory_gib(mem: str | None) -> float | None:
    """sbatch's --mem (a number with an optional K/M/G/T suffix, megabytes without) in GiB; None for "0" (all of
    the node's memory) or unset."""
    if not mem or mem.strip() in ("0", "0G", "0M"):
        return None
    text = mem.strip().upper()
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    factor = units.get(text[-1], 2**20)
    number = text[:-1] if text[-1] in units else text
    return float(number) * factor / GiB
