"""`launch` commands that watch and continue runs: status, logs, cancel, resume, sync, compare.

    launch status [RUN|JOBID]      launch logs RUN [--stage S] [-f]      launch cancel RUN
    launch resume RUN [--stages]   launch sync RUN                       launch compare [RUN ...]

Dispatched by launchers/cli/main.py; each imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from jobs.spec.errors import UserError
from launchers.cli.base import Parser, runs_arguments


def cmd_status(argv: Sequence[str]) -> int:
    parser = Parser(prog="launch status", description="Show a run's stages, or every run under the runs root.")
    parser.add_argument("run", nargs="?", metavar="RUN|JOBID", help="run name, experiment/name, or a job id")
    runs_arguments(parser)
    args = parser.parse_args(argv)
    from jobs.spec.rundir import runs_root
    from launchers.runs import all_runs, describe, summary_line
    from launchers.text import table

    root = runs_root(args.runs_dir)
    if args.run:
        print(describe(whole_run(args.run, args.runs_dir)))
        return 0
    runs = all_runs(root)
    if not runs:
        print(f"no runs under {root}")
        return 0
    print("\n".join(table([("RUN", "EXECUTOR", "STAGE: STATE"), *(summary_line(r) for r in runs)])))
    return 0


def cmd_logs(argv: Sequence[str]) -> int:
    parser = Parser(prog="launch logs", description="Print (or follow) a stage's log for one rank.")
    parser.add_argument("run", metavar="RUN", help="run name, experiment/name, or a job id")
    parser.add_argument("--stage", default="train", help="prepare, train, export or eval (default: train)")
    parser.add_argument("--rank", type=int, default=0, help="global rank (default: 0)")
    parser.add_argument("--err", action="store_true", help="stderr instead of stdout")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing until the stage ends")
    runs_arguments(parser)
    args = parser.parse_args(argv)
    from launchers.runs import show_log

    run = whole_run(args.run, args.runs_dir)
    return show_log(run, args.stage, args.rank, "err" if args.err else "out", args.follow)


def cmd_cancel(argv: Sequence[str]) -> int:
    parser = Parser(prog="launch cancel", description="Cancel every unfinished stage of a run.")
    parser.add_argument("run", metavar="RUN", help="run name, experiment/name, or a job id")
    runs_arguments(parser)
    args = parser.parse_args(argv)
    from launchers.runs import cancel

    run = whole_run(args.run, args.runs_dir)
    cancelled = cancel(run)
    print(f"cancelled {', '.join(cancelled)}" if cancelled else f"nothing to cancel: every stage of {run.name} ended")
    return 0


def cmd_sync(argv: Sequence[str]) -> int:
    parser = Parser(prog="launch sync", description=(
        "Send what a run's stages spooled while the tracking server was unreachable, with the original steps and\n"
        "timestamps (stages also do this themselves when they end)."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN", help="run name, experiment/name, or a job id")
    runs_arguments(parser)
    args = parser.parse_args(argv)
    from jobs.spec.rundir import runs_root
    from launchers.runs import find_run
    from launchers.sync import sync_run

    sync_run(find_run(runs_root(args.runs_dir), args.run).path)
    return 0


def cmd_resume(argv: Sequence[str]) -> int:
    parser = Parser(prog="launch resume", description=(
        "Continue a run in its own directory: the stages that did not complete (or --stages), with the recipe,\n"
        "plan and flags it was launched with. Training resumes from its newest complete checkpoint and continues\n"
        "the same MLflow runs."), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN", help="run name, experiment/name, or a job id")
    parser.add_argument("--stages", metavar="LIST", help="stages to run again (default: those not COMPLETED)")
    runs_arguments(parser)
    args = parser.parse_args(argv)
    from jobs.spec.stages import parse_stages
    from launchers.recipe.load import resolve_saved
    from launchers.runs import stage_states

    run, record = idle_run(args.run, args.runs_dir)
    done = {s.stage for s in stage_states(run) if s.state == "COMPLETED"}
    stages = parse_stages(args.stages) if args.stages else tuple(s for s in record["stages"] if s not in done)
    if not stages:
        print(f"nothing to resume: every stage of {run.name} completed")
        return 0
    recipe = resolve_saved(run.recipe_file).recipe
    return start_again(run, record, stages, recipe, "resumed")


def cmd_compare(argv: Sequence[str]) -> int:
    parser = Parser(prog="launch compare", description=(
        "Compare runs: final and best metrics side by side; runs of the same model and data are paired (full vs\n"
        "qlora: eval loss difference, speed and compute ratios); eval loss, train loss and learning rate against\n"
        "tokens seen as one PNG per group. The table and the PNG are logged once to each compared run's parent\n"
        "MLflow run (comparing the same finished runs again logs nothing new)."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", metavar="RUN", help="run name or experiment/name (default: every run of "
                        "--experiment, else every run in the MLflow store)")
    parser.add_argument("--experiment", metavar="E", help="compare every run of this experiment (with RUNs: as well)")
    parser.add_argument("--format", choices=("text", "csv", "json"), default="text", help="output (default: text)")
    parser.add_argument("--output", metavar="PNG", help="the plot (default: <runs root>/compare/<timestamp>-"
                        "<group>.png; several groups: PNG-<group>.png; a directory: the default names in it)")
    parser.add_argument("--x", choices=("tokens", "step"), default="tokens",
                        help="the plots' x axis: tokens seen (default; methods differ in tokens per step) or step")
    parser.add_argument("--print-only", action="store_true",
                        help="print the comparison only: write no PNG and log nothing to MLflow")
    runs_arguments(parser)
    args = parser.parse_args(argv)
    from jobs.spec.rundir import runs_root
    from launchers.compare import compare

    print(compare(runs_root(args.runs_dir), args.runs, args.experiment, args.format, args.output,
                  write=not args.print_only, x=args.x), end="")
    return 0


def whole_run(reference: str, runs_dir: str | None) -> Any:
    """The run named `reference`, if the files that make it are whole (launchers.runs.check_run), else
    DamagedFile: what status, logs, cancel, resume, export and eval act on."""
    from jobs.spec.rundir import runs_root
    from launchers.runs import check_run, find_run

    run = find_run(runs_root(runs_dir), reference)
    check_run(run)
    return run


def idle_run(reference: str, runs_dir: str | None) -> tuple[Any, dict[str, Any]]:
    """The run named `reference` and its launch record, if it can start stages again: none of its stages still
    queued or running, no launch running its chain."""
    from launchers.runs import TERMINAL, launch_record, stage_states
    from launchers.submit.local_job import running_launcher

    run = whole_run(reference, runs_dir)
    record = launch_record(run)
    busy = [s for s in stage_states(run) if s.state not in TERMINAL and s.state != "IN-PROCESS"]
    if busy:
        raise UserError(f"run {run.name}: {busy[0].stage} is still {busy[0].state}: wait, or `launch cancel "
                        f"{run.name}` first")
    launcher = running_launcher(record) if record["executor"] == "local" else None
    if launcher is not None:
        raise UserError(f"run {run.name}: its launch (pid {launcher.pid}) is still running the chain: wait, or "
                        f"`launch cancel {run.name}` first")
    return run, record


def start_again(run: Any, record: dict[str, Any], stages: tuple[str, ...], recipe: Any, history: str) -> int:
    """Run `stages` of an existing run again, where and how it was launched; noted in launch.json[history]."""
    from jobs.spec.rundir import DamagedFile
    from launchers.submit.request import StartRequest
    from launchers.submit.start import start

    if not record.get("resolved") and "argv" not in record:
        raise DamagedFile(run.launch_file, 'has neither the sbatch options ("resolved") nor the command line ("argv") '
                          "to start stages again with")
    resolved = record.get("resolved") or resolved_from_argv(record["argv"], recipe)
    request = StartRequest.again(run, record, recipe, stages, resolved)
    record.setdefault(history, []).append({"stages": list(stages), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return start(request, record)


def resolved_from_argv(argv: list[str], recipe: Any) -> dict[str, Any]:
    """launch.json written before it recorded the resolved options: the flags parsed again from its command line."""
    from dataclasses import asdict

    from launchers.cli.main import container_of, run_parser, slurm_options

    original = run_parser().parse_intermixed_args(argv[1:])
    return {"slurm": asdict(slurm_options(original, recipe)), "container": asdict(container_of(original))}
