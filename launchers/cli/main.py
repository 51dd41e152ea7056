"""`launch`: fine-tune a code LLM from a recipe, on a SLURM cluster or on this machine.

    launch full-ft starcoder15b -N 2 -p gpu -t 12:00:00      # submit to SLURM (sbatch-style flags)
    launch lora tiny-starcoder --local                      # run here, one process per rank
    launch lora tiny-llama --local --nproc 2                # two CPU ranks over gloo
    launch full-ft starcoder15b --dry-run -N 2              # print the plan and the sbatch script, submit nothing
    launch recipes                                          # the catalog
    launch show qlora starcoder15b training.max_steps=100   # the resolved recipe

This module (the run command) imports neither torch nor MLflow: --help, --version and --dry-run stay fast. The
other subcommands live in launchers/cli/catalog.py (recipes, show), plan.py (plan), runs.py (status, logs, cancel,
resume, sync, compare), models.py (export, eval, generate, judge), serve.py (serve) and server.py (mlflow-server),
imported only when one of them runs. Bad input exits 2 with one line naming the file:line, key or flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from jobs.spec.errors import UserError
from jobs.spec.redaction import redact_text
from launchers.cli.base import Parser
from launchers.text import printable

# subcommand → "module:function", imported only when that subcommand runs (--help and --dry-run stay fast)
COMMANDS = {
    "recipes": "launchers.cli.catalog:cmd_recipes", "show": "launchers.cli.catalog:cmd_show",
    "plan": "launchers.cli.plan:cmd_plan", "serve": "launchers.cli.serve:cmd_serve",
    "status": "launchers.cli.runs:cmd_status", "logs": "launchers.cli.runs:cmd_logs",
    "cancel": "launchers.cli.runs:cmd_cancel", "resume": "launchers.cli.runs:cmd_resume",
    "sync": "launchers.cli.runs:cmd_sync", "compare": "launchers.cli.runs:cmd_compare",
    "export": "launchers.cli.models:cmd_export", "eval": "launchers.cli.models:cmd_eval",
    "generate": "launchers.cli.models:cmd_generate", "judge": "launchers.cli.models:cmd_judge",
    "mlflow-server": "launchers.cli.server:cmd_mlflow_server",
}

RUN_USAGE = "launch METHOD MODEL [key.path=value ...] [--local [--nproc N] | sbatch flags] [--dry-run]"
DESCRIPTION = f"""Fine-tune code LLMs on SLURM or locally; recipes are recipes/<MODEL>/<METHOD>.yaml.

usage:
  {RUN_USAGE}
  launch recipes                              list models × methods and the GPUs they need
  launch show METHOD MODEL [key.path=value]   print the resolved recipe as YAML
  launch plan METHOD MODEL [-N N[,N...]] [--gpus-per-node G] [--gpu TYPE|cpu] [--price P] [--format json]
                                              memory per GPU and node, disk, time, GPU-hours; fits or not
  launch status [RUN|JOBID]                   stages, SLURM state, nodes, elapsed, restarts, last metrics
  launch logs RUN [--stage S] [--rank R] [-f] a stage's log (default: train, rank 0)
  launch cancel RUN                           cancel every unfinished stage of a run
  launch resume RUN [--stages LIST]           continue a run (killed, cancelled, failed) in its own directory
  launch export RUN [--checkpoint N] [--weight W] [--dtype D] [--adapter-only] [--base OTHER]
                    [--adapters RUN=W,... --combine linear|svd|cat|ties|dare_linear [--density D]]
                    [--format gguf [--quant f16|q8_0|q4_0]]
                                              a new export version: merged model + adapter, model card, MLflow
  launch eval RUN [--model merged|adapter|base] [--n 20 --temperature 0.2 --k 1,10] [--problems N]
                  [--engine auto|transformers|vllm]
                                              HumanEval pass@k (sandboxed), FIM, held-out loss, logged to MLflow
  launch generate RUN --prompt TEXT|--file F|--fim-prefix P [--fim-suffix S] [--model M] [--adapter-weight W]
                                              stream a completion from the run's model, here
  launch serve RUN [--model M] [--port 8000]  an OpenAI-compatible server of the model (FIM, chat), and a page
  launch judge RUN_A RUN_B --questions F --judge-url URL --judge-model NAME
                                              both answer; an LLM judge compares them in both orders
  launch compare [RUN ...] [--experiment E] [--x tokens|step]
                                              last/best metrics side by side, full vs qlora pairs, curves PNG
  launch sync RUN                             send to MLflow what a run spooled while the server was unreachable
  launch mlflow-server [--host H] [--port P] [--as-slurm-job]
                                              a team MLflow server (here or as a job); prints the URI to export
  launch --version

Overrides are key.path=value pairs on the resolved recipe, e.g. training.learning_rate=1e-4
data.source=./mine.jsonl method.lora.r=16. Runs live in <runs root>/<experiment>/<name>/ and log to
MLflow ($MLFLOW_TRACKING_URI, else a sqlite store in the runs root)."""


def run_parser() -> Parser:
    parser = Parser(prog="launch", usage=RUN_USAGE, description=DESCRIPTION,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", metavar="METHOD", help="recipe variant, e.g. full-ft, lora, qlora")
    parser.add_argument("model", metavar="MODEL", help="model directory in recipes/, e.g. starcoder15b")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="recipe overrides")

    where = parser.add_argument_group("where it runs")
    where.add_argument("--local", action="store_true", help="run on this machine (submitit LocalExecutor)")
    where.add_argument("--nproc", type=int, metavar="N",
                       help="--local: ranks on this machine (default: local GPUs, else 1 CPU rank)")
    where.add_argument("--debug", action="store_true",
                       help="run every stage in this process, one rank (submitit DebugExecutor: pdb works)")
    where.add_argument("--dry-run", action="store_true", help="print the plan and the sbatch script; submit nothing")
    where.add_argument("--force", action="store_true",
                       help="submit even where the planner says the run does not fit (launch plan)")

    runs = parser.add_argument_group("the run")
    runs.add_argument("--name", help="run name (default: MODEL-METHOD-YYYYmmdd-HHMMSS)")
    runs.add_argument("--experiment", help="MLflow experiment and runs subdirectory (default: MODEL)")
    runs.add_argument("--runs-dir", metavar="DIR", help="runs root (default: $CLUSTERFT_RUNS_DIR, else ./runs)")

    slurm = parser.add_argument_group("sbatch flags (recipe resources are the defaults)")
    slurm.add_argument("-N", "--nodes", type=int)
    slurm.add_argument("--gpus-per-node", type=int)
    slurm.add_argument("-p", "--partition")
    slurm.add_argument("-t", "--time", help="time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS")
    slurm.add_argument("--mem", help="memory per node, e.g. 480G")
    slurm.add_argument("--cpus-per-task", type=int)
    slurm.add_argument("--cpu-partition", metavar="P",
                       help="partition of the CPU stages, prepare and export (default: the site's default partition)")
    slurm.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                       help="another sbatch directive for every stage, e.g. reservation=maint or wckey=proj "
                            "(repeatable; recipe: resources.sbatch)")
    slurm.add_argument("--srun", action="append", default=[], metavar="ARG",
                       help="an extra srun argument for every stage, e.g. --srun=--mpi=pmix (repeatable; replaces "
                            "resources.srun)")
    slurm.add_argument("-A", "--account")
    slurm.add_argument("-q", "--qos")
    slurm.add_argument("-J", "--job-name")
    slurm.add_argument("--constraint")
    slurm.add_argument("--exclusive", action="store_true")
    slurm.add_argument("--mail-type")
    slurm.add_argument("--mail-user")
    slurm.add_argument("--dependency", help="e.g. afterok:1234")
    slurm.add_argument("--setup", action="append", default=[], metavar="LINE",
                       help="shell line run before the job, e.g. 'module load cuda/12.4' (repeatable)")
    slurm.add_argument("--container", metavar="IMAGE.sif",
                       help="run every task in this Apptainer image (apptainer exec --nv; runs root and HF cache "
                       "bound)")
    slurm.add_argument("--container-image", metavar="IMAGE",
                       help="run every task in this image through pyxis/enroot (srun --container-image)")
    slurm.add_argument("--parsable", action="store_true",
                       help="print only the job id of the last stage (depend on it to wait for the whole chain)")
    where.add_argument("--stages", metavar="LIST",
                       help="comma-separated subset of prepare,train,export,eval (default: all, in that order)")
    slurm.add_argument("--requeue", action=argparse.BooleanOptionalAction, default=True,
                       help="requeue on preemption and time limits (default: on; --no-requeue ends the stage instead)")
    slurm.add_argument("--max-requeues", type=int, default=3, metavar="N",
                       help="requeues after time limits before the run ends TIMEOUT (default: 3; preemptions "
                            "always requeue)")
    return parser


# flag → (recipe key, label shown in errors)
RESOURCE_FLAGS = {
    "nodes": ("resources.nodes", "-N/--nodes"),
    "gpus_per_node": ("resources.gpus_per_node", "--gpus-per-node"),
    "partition": ("resources.partition", "-p/--partition"),
    "time": ("resources.time", "-t/--time"),
    "mem": ("resources.mem", "--mem"),
    "cpus_per_task": ("resources.cpus_per_task", "--cpus-per-task"),
    "cpu_partition": ("resources.cpu_partition", "--cpu-partition"),
}


def flag_overrides(args: argparse.Namespace) -> dict[str, str]:
    """sbatch-style flags as recipe overrides, each remembering its flag for error messages."""
    flags: dict[str, str] = {}
    for attr, (key, label) in RESOURCE_FLAGS.items():
        value = getattr(args, attr)
        if value is not None:  # JSON-quoted text stays text (a partition named "42", a time of "90")
            text = json.dumps(value) if isinstance(value, str) else str(value)
            flags[f"{key}={text}"] = f"flag {label} {value}"
    for directive in args.sbatch:
        key, equals, value = directive.partition("=")
        if not equals or not key:
            raise UserError(f"flag --sbatch {redact_text(directive)}: expected KEY=VALUE, e.g. --sbatch "
                            "reservation=maint")
        flags[f"resources.sbatch.{key.removeprefix('--')}={json.dumps(value)}"] = \
            f"flag --sbatch {redact_text(directive)}"
    if args.srun:
        flags[f"resources.srun={json.dumps(args.srun)}"] = f"flag --srun {redact_text(' '.join(args.srun))}"
    if args.nproc is not None and not args.local:
        raise UserError("flag --nproc: only with --local (on SLURM, ranks come from -N and --gpus-per-node)")
    for attr, flag in (("nodes", "-N/--nodes"), ("gpus_per_node", "--gpus-per-node")):
        if getattr(args, attr) is not None and (args.local or args.debug):
            raise UserError(f"flag {flag}: SLURM only; --local runs on this machine with --nproc ranks")
    if args.debug:
        if args.local:
            raise UserError("flags --debug and --local: choose one (--debug runs in this process, one rank)")
        flags["resources.nodes=1"] = "flag --debug"
        flags["resources.tasks_per_node=1"] = "flag --debug"
    if args.local:
        from launchers.submit.local import local_gpu_count

        nproc = args.nproc if args.nproc is not None else (local_gpu_count() or 1)
        if nproc < 1:
            raise UserError(f"flag --nproc {nproc}: must be at least 1")
        flags["resources.nodes=1"] = "flag --local"
        flags[f"resources.tasks_per_node={nproc}"] = f"flag --nproc {nproc}"
    return flags


def cmd_run(argv: Sequence[str]) -> int:
    args = run_parser().parse_intermixed_args(argv)
    from jobs.spec.rundir import RunDir, check_name, check_writable_root, runs_root, timestamp, tracking_uri
    from jobs.spec.stages import STAGE_NAMES, parse_stages
    from launchers.cli.plan import planned, refuse_unless_it_fits, with_estimate
    from launchers.planner.report import plan_table
    from launchers.recipe.checks import check_files, check_lora_targets
    from launchers.recipe.hub import pin_hub_model
    from launchers.recipe.load import resolve
    from launchers.recipe.plan import make_plan
    from launchers.submit.chain import chain_jobs
    from launchers.submit.request import StartRequest
    from launchers.submit.slurm import dependency_jobs, render_sbatch
    from launchers.submit.start import start

    stages = parse_stages(args.stages) if args.stages else STAGE_NAMES
    if args.max_requeues < 0:
        raise UserError(f"flag --max-requeues {args.max_requeues}: must be 0 or more")
    resolved = resolve(args.method, args.model, args.overrides, flag_overrides(args))
    recipe = resolved.recipe
    for where in resolved.redacted:
        print(f"warning: {where}: looks like a secret: redacted from the recipe, its files and MLflow "
              "(pass credentials through the environment, e.g. HF_TOKEN)", file=sys.stderr)
    check_setup_lines(args.setup)
    check_files(resolved)
    resolved = pin_hub_model(resolved, args.dry_run)
    recipe = resolved.recipe
    executor = "debug" if args.debug else "local" if args.local else "slurm"
    plan = make_plan(resolved)
    estimate = planned(resolved, plan, here=executor != "slurm")
    plan = with_estimate(plan, estimate)
    root = runs_root(args.runs_dir)
    check_writable_root(root, args.runs_dir)
    experiment = check_name(args.experiment or recipe.model_name, "--experiment")
    name = check_name(args.name or f"{recipe.model_name}-{recipe.method_name}-{timestamp()}", "--name")
    run = RunDir.new(root, experiment, name)
    run.check_new()
    request = StartRequest(run, recipe, plan, executor, stages, slurm_options(args, recipe), container_of(args),
                           args.max_requeues, args.parsable)

    if args.dependency and executor != "slurm":
        raise UserError("flag --dependency: SLURM only (local stages already run one after the other)")
    if args.dependency:
        dependency_jobs(args.dependency)  # the syntax, dry run or not; that the jobs exist, on submission

    if args.dry_run:
        print(plan_summary(recipe, plan, run, executor, tracking_uri(root), stages))
        if estimate is not None:
            print("\n" + plan_table(estimate))
        refuse_unless_it_fits(estimate, resolved, args.force)
        if executor == "slurm":
            python = request.container.python(root)
            previous = None
            for job in chain_jobs(recipe, plan, request.options, stages, request.container.srun_args(root)):
                params = dict(job.params, **({"dependency": f"afterok:<{previous} job id>"} if previous else {}))
                print(f"\n# {job.stage} stage: sbatch script (submitit)\n"
                      + render_sbatch(params, run.submitit, python))
                previous = job.stage
        return 0

    refuse_unless_it_fits(estimate, resolved, args.force)
    if args.dependency:
        from launchers.submit.slurm import check_dependency

        check_dependency(args.dependency)
    if executor != "slurm" and importlib.util.find_spec("torch") is None:
        raise UserError(f"flag --{executor}: the stages run on this machine, which has no torch: "
                        "pip install -e '.[train]' here, or submit to SLURM")
    if executor == "slurm" and shutil.which("sbatch") is None:
        raise UserError("sbatch not found: this machine is not a SLURM login node (use --local to run here, "
                        "or --dry-run to see the job)")
    if executor == "slurm":
        warn_on_job_python(request.container)
    check_lora_targets(resolved, run.architecture_cache if run.root.exists() else None)  # never makes the root
    request = dataclasses.replace(request, created=run.create())
    run.recipe_file.write_text(recipe.to_yaml(), encoding="utf-8")
    run.write_json(run.plan_file, plan.as_dict())
    record = request.launch_record(list(argv))
    run.write_json(run.launch_file, record)
    return start(request, record)


def slurm_options(args: argparse.Namespace, recipe: Any) -> Any:
    """The sbatch flags that are not recipe resources (those became recipe overrides in `flag_overrides`)."""
    from launchers.submit.slurm import SlurmOptions

    return SlurmOptions(
        job_name=args.job_name or f"{recipe.model_name}-{recipe.method_name}", account=args.account, qos=args.qos,
        constraint=args.constraint, exclusive=args.exclusive, mail_type=args.mail_type, mail_user=args.mail_user,
        dependency=args.dependency, requeue=args.requeue, setup=tuple(args.setup),
    )


def container_of(args: argparse.Namespace) -> Any:
    from launchers.submit.containers import Container

    return Container(apptainer_image=args.container, pyxis_image=args.container_image)


def check_setup_lines(lines: Sequence[str]) -> None:
    """--setup lines are written verbatim into the sbatch script: a secret there would be on disk for good."""
    for line in lines:
        if redact_text(line) != line:
            raise UserError(f"flag --setup {redact_text(line)!r}: carries a secret, which would be written into the "
                            "sbatch script: export it in your shell instead (sbatch passes your environment on)")


def plan_summary(recipe: Any, plan: Any, run: Any, executor: str, uri: str, stages: Sequence[str]) -> str:
    from jobs.spec.rundir import public_uri

    lines = [
        f"recipe:      {recipe.name} ({recipe.method.kind}, {recipe.distributed.backend})",
        f"model:       {model_summary(recipe.model)}",
        f"run:         {run.path}",
        f"executor:    {executor}: {plan.nodes} node(s) × {plan.ranks_per_node} rank(s) = world size {plan.world_size}",
        f"stages:      {' → '.join(stages)}",
        f"batch:       {recipe.training.per_device_batch_size} per device × GA {plan.gradient_accumulation_steps} "
        f"× {plan.world_size} ranks = {plan.global_batch_size} sequences ({plan.tokens_per_step} tokens) per step",
        f"precision:   {plan.precision}",
        f"accelerate:  {plan.accelerate_config or 'none (single process)'}"
        + (f" (FSDP{plan.fsdp_version})" if plan.fsdp_version else ""),
        f"tracking:    {public_uri(uri)}",
    ]
    return "\n".join(lines)


def model_summary(model: Any) -> str:
    from jobs.common.hub import is_hub_id

    if model.init == "random":
        return f"random init from {model.config}"
    if is_hub_id(model.name_or_path):
        return f"{model.name_or_path} @ {model.revision} (the prepare stage fetches it; later stages run offline)"
    return model.name_or_path


def warn_on_job_python(container: Any) -> None:
    """Without a container the jobs run this Python on the compute nodes: say so when it lacks the training stack
    (the light login-node install), before the queue wait, not after it."""
    if container.apptainer_image or container.pyxis_image:
        return
    missing = [name for name in ("torch", "transformers", "trl", "peft") if importlib.util.find_spec(name) is None]
    if missing:
        print(f"warning: the jobs will run {sys.executable} on the compute nodes, and it cannot import "
              f"{', '.join(missing)} (the launcher-only install): they will fail at start. Install the stack into "
              "it (pip install -e '.[train]') or run them in a container (--container IMAGE.sif, "
              "--container-image IMAGE)",
              file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["--version"], ["-V"]):
        print(f"launch (clusterft) {package_version()}")
        return 0
    try:
        if args and args[0] in COMMANDS:
            module, _, function = COMMANDS[args[0]].partition(":")
            return int(getattr(importlib.import_module(module), function)(args[1:]))
        return cmd_run(args)
    except UserError as err:
        print(f"launch: error: {printable(str(err))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C before a local chain began (it handles its own: launchers/submit/local.py)
        print("launch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `launch recipes | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clusterft")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


if __name__ == "__main__":
    sys.exit(main())
