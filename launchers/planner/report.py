"""The planner's estimate as text: the table `launch plan`, `--dry-run` and every submission print, and the
scaling table of `launch plan --nodes 1,2,4,...`.

    print(plan_table(estimate))
    print(scaling_table([estimate_at_1_node, estimate_at_2_nodes, ...]))
"""

from __future__ import annotations

from launchers.planner.estimate import Estimate, gib
from launchers.planner.setup import GiB
from launchers.text import table


def plan_table(estimate: Estimate) -> str:
    setup, gpu = estimate.setup, estimate.gpu
    device = setup.device.key if setup.device else "CPU rank"
    per = "per GPU" if setup.device else "per CPU rank"
    activations = "activations (gradient checkpointing)" if setup.checkpointing else "activations"
    share = gpu.total / estimate.limit
    rows = [
        (f"memory {per} ({device})", "GiB"),
        ("  parameters", gib(gpu.parameters)),
        ("  gradients", gib(gpu.gradients)),
        ("  optimizer states", gib(gpu.optimizer)),
        (f"  {activations}", gib(gpu.activations)),
        ("  buffers (runtime, gathers, 10% fragmentation)", gib(gpu.buffers)),
        ("  total / limit", f"{gib(gpu.total)} / {gib(estimate.limit)} ({share:.0%})"),
    ]
    cpu = estimate.cpu
    node = f" of {gib(estimate.node_limit)}" if estimate.node_limit else ""
    lines = [f"plan:        {setup.nodes} node(s) × {setup.ranks_per_node} {device}, {setup.backend}, {setup.kind}, "
             f"micro batch {setup.micro_batch} × {setup.seq_length} tokens, GA {setup.accumulation}"]
    lines += table(rows)
    lines.append(f"CPU per node: load {gib(cpu.load)} · checkpoint save {gib(cpu.checkpoint)} · final save "
                 f"{gib(cpu.final_save)} GiB{node}")
    disk = estimate.disk
    lines.append(f"disk:        checkpoint {gib(disk.checkpoint)} GiB × {disk.saves} written "
                 f"({gib(disk.written)} GiB), at most {disk.kept} on disk ({gib(disk.kept * disk.checkpoint)} GiB); "
                 f"final {gib(disk.final)} GiB; export {gib(disk.export)} GiB")
    lines.append(time_line(estimate))
    lines.append(f"verdict:     {estimate.verdict}" + ("" if estimate.feasible else f": {estimate.over()}"))
    return "\n".join(lines)


def time_line(estimate: Estimate) -> str:
    step = estimate.step
    text = (f"time:        {estimate.setup.tokens_per_step} tokens/step, step {step.seconds:.2f} s (compute "
            f"{step.compute:.2f} s, communication {step.communication:.2f} s) at MFU {estimate.mfu:.2f} "
            f"{estimate.mfu_source}")
    if estimate.steps is None:
        return text + "; steps unknown (epochs over a hub dataset)"
    wall = estimate.wall_seconds or 0.0
    text += f"; {estimate.steps} steps: {wall / 3600:.1f} h"
    limit_h = estimate.setup.time_limit_minutes / 60
    if wall / 3600 > limit_h:
        text += f" (over the {limit_h:g} h time limit: about {int(wall / 3600 // limit_h)} requeue(s) continue it)"
    if estimate.gpu_hours is not None:
        text += f", {estimate.gpu_hours:.1f} GPU-hours"
        price = estimate.price_per_gpu_hour
        if price:
            text += f", cost {estimate.gpu_hours * price:.0f} at {price:g} per GPU-hour"
    return text


def scaling_table(estimates: list[Estimate]) -> str:
    """Each node count as `-N` would submit it (the recipe's micro batch and accumulation per GPU): memory per GPU,
    step time, efficiency (tokens/s per GPU against the first row); then the hours and GPU-hours the first row's
    training tokens take at that throughput."""
    first = estimates[0]
    def rate(estimate: Estimate) -> float:
        return estimate.setup.tokens_per_step / estimate.step.seconds

    tokens = first.steps * first.setup.tokens_per_step if first.steps else None
    rows = [("NODES", "GPUS", "MEM/GPU GiB", "STEP s", "COMM s", "EFFICIENCY", "TOKENS/s", "HOURS*", "GPU-HOURS*",
             "VERDICT")]
    for estimate in estimates:
        setup = estimate.setup
        efficiency = rate(estimate) / setup.world / (rate(first) / first.setup.world)
        hours = tokens / rate(estimate) / 3600 if tokens else None
        rows.append((str(setup.nodes), str(setup.world), f"{estimate.gpu.total / GiB:.1f}",
                     f"{estimate.step.seconds:.2f}", f"{estimate.step.communication:.2f}", f"{efficiency:.0%}",
                     f"{rate(estimate):,.0f}", f"{hours:.2f}" if hours is not None else "?",
                     f"{hours * setup.world:,.0f}" if hours is not None and setup.device else "?", estimate.verdict))
    note = (f"* for the first row's {tokens:,} training tokens" if tokens else "* steps unknown")
    return "\n".join([*table(rows), note])
