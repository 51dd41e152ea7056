"""`launch plan`: memory per GPU and per node, disk, time and GPU-hours of a recipe, before anything is queued.

    launch plan full-ft starcoder15b -N 2                        # the table; verdict fits / tight / does not fit
    launch plan qlora starcoder15b -N 1 --gpus-per-node 1 --gpu a100-40gb
    launch plan full-ft starcoder15b --nodes 1,2,4,8,16,32,64    # the scaling table
    launch plan lora tiny-starcoder --gpu cpu --format json      # the figures, for scripts

Every submission and `--dry-run` plan the same way (`planned`): a run that does not fit exits 2 with one line
naming what is over and the smallest change that fits, unless --force. Imports no torch.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from jobs.spec.errors import UserError
from jobs.spec.gpus import GPUS, Gpu, gpu_named
from launchers.cli.base import Parser

CPU = "cpu"


def cmd_plan(argv: Sequence[str]) -> int:
    parser = Parser(prog="launch plan", description="Memory, disk, time and cost of a recipe, before it is queued.")
    parser.add_argument("method", metavar="METHOD")
    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value")
    parser.add_argument("-N", "--nodes", metavar="N[,N...]", help="nodes, or a list for a scaling table: 1,2,4,8")
    parser.add_argument("--gpus-per-node", type=int, metavar="G")
    parser.add_argument("--gpu", metavar="TYPE", help=f"the GPU: {', '.join(GPUS)}, or {CPU} (default: the "
                                                      "recipe's resources.gpu_type)")
    parser.add_argument("--price", type=float, metavar="PER_GPU_HOUR", help="cost of one GPU-hour, for the total")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_intermixed_args(argv)
    from launchers.planner.report import plan_table, scaling_table
    from launchers.recipe.checks import check_files
    from launchers.recipe.load import resolve
    from launchers.recipe.plan import make_plan

    node_counts = parse_nodes(args.nodes)
    flags: dict[str, str] = {}
    if args.gpus_per_node is not None:
        flags[f"resources.gpus_per_node={args.gpus_per_node}"] = f"flag --gpus-per-node {args.gpus_per_node}"
    if args.gpu == CPU:
        ranks = args.gpus_per_node or 1
        flags["resources.gpus_per_node=0"] = "flag --gpu cpu"
        flags[f"resources.tasks_per_node={ranks}"] = "flag --gpu cpu"
    elif args.gpu is not None:
        flags[f"resources.gpu_type={json.dumps(args.gpu)}"] = f"flag --gpu {args.gpu}"
    estimates = []
    for nodes in node_counts or [None]:
        node_flags = dict(flags, **({f"resources.nodes={nodes}": f"flag -N {nodes}"} if nodes else {}))
        resolved = resolve(args.method, args.model, args.overrides, node_flags)
        check_files(resolved)
        estimates.append(planned(resolved, make_plan(resolved), args.price, required=True))
    if args.format == "json":
        figures = [estimate.figures() for estimate in estimates]
        print(json.dumps(figures if len(figures) > 1 else figures[0], indent=2))
    elif len(estimates) > 1:
        print(scaling_table(estimates))
    else:
        print(plan_table(estimates[0]))
    return 0


def parse_nodes(text: str | None) -> list[int]:
    if text is None:
        return []
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"flag -N/--nodes {text!r}: a node count or a comma-separated list, e.g. 1,2,4") from None
    if not counts or min(counts) < 1:
        raise UserError(f"flag -N/--nodes {text!r}: node counts are at least 1")
    return counts


def planned(resolved: Any, plan: Any, price: float | None = None, required: bool = False,
            here: bool = False) -> Any:
    """The estimate of a resolved recipe on its device, or None (with a warning) where it cannot be planned and
    `required` is false: a GPU type the catalog does not list, a model without a local config.json. `here`: the
    ranks run on this machine, whose memory is the node's limit."""
    from launchers.planner.estimate import estimate_run
    from launchers.recipe.checks import model_config
    recipe = resolved.recipe
    problem = None
    device: Gpu | None = None
    if recipe.resources.gpus_per_node:  # --gpu cpu plans with none
        device = gpu_named(recipe.resources.gpu_type or "")
        if device is None:
            what = (f"resources.gpu_type {recipe.resources.gpu_type!r} is not in the planner's catalog"
                    if recipe.resources.gpu_type else "resources.gpu_type is not set: the planner needs the GPU")
            problem = (f"{resolved.where('resources', 'gpu_type')}: {what} ({', '.join(GPUS)}): name one with "
                       "--gpu TYPE (launch plan) or in resources.gpu_type")
    config = model_config(resolved)
    if config is None:
        problem = f"{resolved.where('model', 'name_or_path')}: the planner reads model.config (a local config.json)"
    if problem:
        if required:
            raise UserError(problem)
        print(f"warning: not planned: {problem}", file=sys.stderr)
        return None
    return estimate_run(recipe, plan, device, config, price, here)


def with_estimate(plan: Any, estimate: Any) -> Any:
    """`plan` carrying the estimate's figures (plan.json, the MLflow parent run's params)."""
    return dataclasses.replace(plan, estimate=estimate.figures() if estimate is not None else None)


def refuse_unless_it_fits(estimate: Any, resolved: Any, force: bool) -> None:
    """Exit 2 in one line where the run does not fit: what is over, and the smallest change that fits."""
    if estimate is None or estimate.feasible:
        return
    from launchers.planner.estimate import suggest_fix

    if force:
        print(f"warning: {resolved.recipe.name} does not fit ({estimate.over()}): submitted anyway (--force)",
              file=sys.stderr)
        return
    fix = suggest_fix(estimate, resolved.recipe)
    change = f"it fits with {fix}" if fix else "no single change makes it fit"
    raise UserError(f"{resolved.recipe.name} does not fit: {estimate.over()}; {change} "
                    "(launch plan for the table; --force to submit anyway)")
