"""The whole estimate of a recipe on a device, its verdict, and the smallest change that makes it fit.

    estimate = estimate_run(recipe, plan, device)        # device: a catalog Gpu, or None for CPU ranks
    estimate.verdict, estimate.figures()                 # "fits" | "tight" | "does not fit"; the JSON figures
    suggest_fix(estimate)                                # e.g. "training.gradient_checkpointing=true", or None

Every submission and dry run plans (launchers/cli/main.py); `launch plan` prints it (launchers/cli/plan.py).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.spec.gpus import Gpu
from jobs.spec.plan import Plan
from jobs.spec.schema import Recipe
from launchers.planner.costs import Disk, StepTime, disk_use, step_time, total_steps
from launchers.planner.memory import CpuMemory, GpuMemory, cpu_memory, gpu_memory
from launchers.planner.setup import GiB, Setup
from launchers.planner.shape import model_shape

TIGHT = 0.9  # within 10% of a limit
MAX_NODES = 64
BENCHMARKS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
MEASURED_MFU = re.compile(r"^\|\s*([\w.-]+)\s*\|\s*(full|lora|qlora)\s*\|\s*(gc|no-gc)\s*\|\s*(0?\.\d+)\s*\|", re.M)
MFU_HEADING = "## MFU measured on GPUs"
CPU_MFU = 0.5  # of CPU_RANK_FLOPS (launchers/planner/costs.py)
QLORA_SPEED = 0.6  # QLoRA's rate against LoRA's on the same GPU: an assumption until measured
CHECKPOINTING_SPEED = 0.75  # gradient checkpointing runs each forward twice: 8 FLOPs per weight of work for 6 counted
BYTES_PER_TOKEN = 3.6  # source code per token with a code model's BPE (StarCoder's tokenizer on Python)


@dataclass(frozen=True)
class Estimate:
    setup: Setup
    gpu: GpuMemory
    limit: int  # bytes a GPU (a CPU rank: its share of the node) may use
    cpu: CpuMemory
    node_limit: int | None  # the node's memory, when the recipe or the machine says
    disk: Disk
    step: StepTime
    steps: int | None
    mfu: float
    mfu_source: str
    price_per_gpu_hour: float | None

    @property
    def verdict(self) -> str:
        ratio = self.pressure
        return "fits" if ratio <= TIGHT else "tight" if ratio <= 1 else "does not fit"

    @property
    def pressure(self) -> float:
        """The larger of the GPU's and the node's memory use over their limits."""
        ratios = [self.gpu.total / self.limit]
        if self.node_limit:
            ratios.append(max(self.cpu.load, self.cpu.checkpoint, self.cpu.final_save) / self.node_limit)
        return max(ratios)

    @property
    def feasible(self) -> bool:
        return self.verdict != "does not fit"

    @property
    def wall_seconds(self) -> float | None:
        return self.steps * self.step.seconds if self.steps else None

    @property
    def gpu_hours(self) -> float | None:
        wall = self.wall_seconds
        return wall / 3600 * self.setup.world if wall is not None and self.setup.device is not None else None

    def over(self) -> str:
        """What exceeds its limit most, in words."""
        gpu_ratio = self.gpu.total / self.limit
        node = max(self.cpu.load, self.cpu.checkpoint, self.cpu.final_save)
        if self.node_limit and node / self.node_limit > gpu_ratio:
            moment = max(("load", self.cpu.load), ("checkpoint save", self.cpu.checkpoint),
                         ("final save", self.cpu.final_save), key=lambda item: item[1])[0]
            return f"CPU memory per node at {moment} {gib(node)} > {gib(self.node_limit)} GiB"
        component, size = max(self.gpu.components().items(), key=lambda item: item[1])
        where = "per GPU" if self.setup.device is not None else "per rank"
        return f"memory {where} {gib(self.gpu.total)} > {gib(self.limit)} GiB (largest: {component} {gib(size)} GiB)"

    def figures(self) -> dict[str, Any]:
        """The machine-readable estimate (`launch plan --format json`, plan.json's "estimate"). GB are GiB."""
        hours = self.gpu_hours
        return {
            "feasible": self.feasible, "verdict": self.verdict,
            "device": self.setup.device.key if self.setup.device else "cpu",
            "nodes": self.setup.nodes, "ranks_per_node": self.setup.ranks_per_node,
            "per_gpu_gb": {"parameters": _gb(self.gpu.parameters), "gradients": _gb(self.gpu.gradients),
                           "optimizer": _gb(self.gpu.optimizer), "model_states": _gb(self.gpu.model_states),
                           "activations": _gb(self.gpu.activations), "buffers": _gb(self.gpu.buffers),
                           "allocated": _gb(self.gpu.allocated), "total": _gb(self.gpu.total),
                           "limit": _gb(self.limit)},
            "cpu_per_node_gb": {"load": _gb(self.cpu.load), "checkpoint": _gb(self.cpu.checkpoint),
                                "final_save": _gb(self.cpu.final_save),
                                "limit": _gb(self.node_limit) if self.node_limit else None},
            "checkpoint_gb": _gb(self.disk.checkpoint), "checkpoints_written": self.disk.saves,
            "checkpoints_written_gb": _gb(self.disk.written), "checkpoints_kept_gb": _gb(self.disk.kept
                                                                                         * self.disk.checkpoint),
            "final_gb": _gb(self.disk.final), "export_gb": _gb(self.disk.export),
            "tokens_per_step": self.setup.tokens_per_step, "steps": self.steps,
            "flops_per_token": self.step.flops_per_token,
            "step_seconds": round(self.step.seconds, 3), "communication_seconds": round(self.step.communication, 3),
            "mfu": self.mfu, "mfu_source": self.mfu_source,
            "wall_hours": round(self.wall_seconds / 3600, 3) if self.wall_seconds is not None else None,
            "gpu_hours": round(hours, 2) if hours is not None else None,
            "cost": round(hours * self.price_per_gpu_hour, 2) if hours is not None and self.price_per_gpu_hour
            else None,
        }


def estimate_run(recipe: Recipe, plan: Plan, device: Gpu | None, config: dict[str, Any],
                 price_per_gpu_hour: float | None = None, here: bool = False) -> Estimate:
    """`here`: the ranks run on this machine (--local, --debug), whose memory is the limit, not resources.mem."""
    setup = Setup.of(recipe, plan, model_shape(config), device)
    if here:
        setup = dataclasses.replace(setup, node_memory_gib=None)
    return estimate_setup(setup, recipe, price_per_gpu_hour)


def estimate_setup(setup: Setup, recipe: Recipe, price_per_gpu_hour: float | None = None) -> Estimate:
    mfu, source = mfu_of(setup)
    step = step_time(setup, mfu)
    steps = total_steps(recipe.training, setup.tokens_per_step, data_tokens(recipe))
    node_limit = _node_limit(setup)
    gpu = gpu_memory(setup)
    if setup.device is not None:
        limit = int(setup.device.memory_gib * GiB)
    else:  # a CPU rank's share of its node
        limit = int((node_limit or gpu.total) / setup.ranks_per_node)
    return Estimate(setup, gpu, limit, cpu_memory(setup), node_limit, disk_use(setup, steps, step.seconds,
                    recipe.training), step, steps, mfu, source, price_per_gpu_hour)


def suggest_fix(estimate: Estimate, recipe: Recipe) -> str | None:
    """The least disruptive single change that fits: gradient checkpointing, a smaller micro batch, more nodes,
    QLoRA instead of a full fine-tune. None when nothing alone does."""
    setup = estimate.setup
    candidates: list[tuple[str, Setup]] = []
    if not setup.checkpointing:
        candidates.append(("training.gradient_checkpointing=true", dataclasses.replace(setup, checkpointing=True)))
    batch = setup.micro_batch // 2
    while batch >= 1:
        candidates.append((f"training.per_device_batch_size={batch}", dataclasses.replace(setup, micro_batch=batch)))
        batch //= 2
    nodes = setup.nodes * 2
    while nodes <= MAX_NODES and setup.device is not None:
        candidates.append((f"-N {nodes}", dataclasses.replace(setup, nodes=nodes)))
        nodes *= 2
    if setup.kind == "full":
        qlora = dataclasses.replace(setup, kind="qlora", double_quant=True, backend="fsdp" if setup.world > 1
                                    else "single", lora_parameters=setup.shape.lora_parameters(16, "all-linear"))
        candidates.append(("QLoRA instead (launch qlora ...)", qlora))
    for change, candidate in candidates:
        if estimate_setup(candidate, recipe).feasible:
            return change
    return None


def mfu_of(setup: Setup) -> tuple[float, str]:
    """The MFU of this GPU, method and checkpointing measured in docs/benchmarks.md, else the catalog's full
    fine-tune figure scaled by the method's and checkpointing's assumed factors."""
    if setup.device is None:
        return CPU_MFU, "assumed (CPU)"
    checkpointing = "gc" if setup.checkpointing else "no-gc"
    measured = measured_mfu(BENCHMARKS).get((setup.device.key, setup.kind, checkpointing))
    if measured is not None:
        return measured, "measured (docs/benchmarks.md)"
    factors = [(name, value) for name, value in (("QLoRA", QLORA_SPEED), ("checkpointing", CHECKPOINTING_SPEED))
               if (name == "QLoRA" and setup.kind == "qlora") or (name == "checkpointing" and setup.checkpointing)]
    mfu = setup.device.assumed_mfu
    for _, value in factors:
        mfu *= value
    scaled = "".join(f" × {value:g} {name}" for name, value in factors)
    return mfu, f"assumed ({setup.device.assumed_mfu:g}{scaled})"


def measured_mfu(path: Path) -> dict[tuple[str, str, str], float]:
    """(gpu, method, gc|no-gc) → MFU from the tables of every section whose heading starts with MFU_HEADING in
    `path` (the GPU acceptance script appends one per run); a later row of a pair wins."""
    if not path.is_file():
        return {}
    measured: dict[tuple[str, str], float] = {}
    for section in path.read_text(encoding="utf-8").split("\n## ")[1:]:
        if ("## " + section).startswith(MFU_HEADING):
            measured.update({(gpu, method, checkpointing): float(value)
                             for gpu, method, checkpointing, value in MEASURED_MFU.findall(section)})
    return measured


def data_tokens(recipe: Recipe) -> int | None:
    """The training data's tokens, estimated from the size of local files (None for a hub dataset)."""
    source = Path(recipe.data.source)
    files = [source] if source.is_file() else sorted(source.rglob("*")) if source.is_dir() else []
    size = sum(path.stat().st_size for path in files if path.is_file())
    if not size:
        return None
    return int(size / BYTES_PER_TOKEN * (1 - (recipe.data.eval_fraction or 0)))


def _node_limit(setup: Setup) -> int | None:
    if setup.node_memory_gib is not None:
        return int(setup.node_memory_gib * GiB)
    if setup.device is None:  # CPU ranks on this machine (--local), or a node like it
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def gib(size: float) -> str:
    return f"{size / GiB:.1f}"


def _gb(size: float) -> float:
    return round(size / GiB, 2)

