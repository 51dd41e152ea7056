"""The Plan: every number derived from a recipe at launch (`launchers.recipe.plan.make_plan`), read by every rank.

It travels with the recipe in each stage's pickle and is written to <run>/plan.json; `Plan(**json)` reads it back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Precision = Literal["bf16", "fp16", "no"]


@dataclass(frozen=True)
class Plan:
    """What the job needs beyond the recipe: derived once at launch, read by every rank."""

    world_size: int
    nodes: int
    ranks_per_node: int
    gradient_accumulation_steps: int
    global_batch_size: int
    tokens_per_step: int
    precision: Precision
    accelerate_config: str | None
    fsdp_version: int | None = None  # backend fsdp: 1 or 2, as the Trainer's FSDP plugin must report it
    accelerate: dict[str, Any] = field(default_factory=dict)
    deepspeed: dict[str, Any] | None = None
    estimate: dict[str, Any] | None = None  # the planner's figures (launchers/planner: memory, disk, time)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
