"""`launch` commands on a run's model: export (merge, mix, transfer, GGUF), eval, generate, judge.

    launch export RUN [--checkpoint N] [--weight W] [--adapters RUN=W,...] [--format gguf]
    launch eval RUN [--model merged|adapter|base] [--n 20 --k 1,10]
    launch generate RUN --prompt TEXT        launch judge RUN_A RUN_B --questions F --judge-url URL

Dispatched by launchers/cli/main.py; export and eval run where the run ran (launchers.cli.runs.start_again), generate
and judge in this process.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from typing import Any

from jobs.spec.errors import UserError
from launchers.cli.base import Parser, runs_arguments
from launchers.cli.runs import idle_run, start_again


def cmd_export(argv: Sequence[str]) -> int:
    parser = Parser(prog="launch export", description=(
        "Export a trained run as a new version <run>/export/vN: LoRA/QLoRA adapters merged (streaming) into the\n"
        "16-bit base as model/, plus the adapter alone as adapter/; a full fine-tune copied as model/. Each with a\n"
        "model card; recorded in the run's MLflow parent run. Runs where the run ran (SLURM or this machine)."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN", help="run name, experiment/name, or a job id")
    parser.add_argument("overrides", nargs="*", metavar="export.key=value", help="recipe overrides, e.g. "
                        "export.dtype=bfloat16")
    parser.add_argument("--checkpoint", type=int, metavar="N", help="export checkpoints/checkpoint-N, not final/")
    parser.add_argument("--weight", type=float, metavar="W", help="scale the adapter by W (e.g. 0.8; default 1)")
    parser.add_argument("--dtype", metavar="DTYPE", help="cast the weights: bfloat16, float16 or float32")
    parser.add_argument("--adapter-only", action="store_true", help="LoRA/QLoRA: write the adapter, no merged model")
    parser.add_argument("--base", metavar="DIR|HUB_ID", help="LoRA/QLoRA: merge into this base instead (same "
                        "architecture and shapes, checked tensor by tensor)")
    parser.add_argument("--adapters", metavar="RUN=W,...", help="LoRA/QLoRA: mix these runs' adapters, e.g. "
                        "copilot=0.5,assistant=0.5 (a run name, or experiment/name)")
    parser.add_argument("--combine", metavar="HOW", help="linear, svd, cat (default), ties or dare_linear (PEFT "
                        "add_weighted_adapter semantics; linear/ties/dare_linear need equal ranks)")
    parser.add_argument("--density", metavar="D", help="ties, dare_linear: the fraction of values kept")
    parser.add_argument("--format", choices=("safetensors", "gguf"), default="safetensors",
                        help="gguf: also write the model for llama.cpp (llama, gpt_bigcode); default safetensors only")
    parser.add_argument("--quant", metavar="TYPE", help="--format gguf: f16 (default), q8_0 or q4_0")
    runs_arguments(parser)
    args = parser.parse_intermixed_args(argv)
    from jobs.spec.schema import EQUAL_RANK_COMBINATIONS
    from launchers.recipe.load import resolve_saved

    flags = {f"export.{key}={value}": f"flag --{flag} {value}" for key, flag, value in (
        ("checkpoint", "checkpoint", args.checkpoint), ("adapter_weight", "weight", args.weight),
        ("dtype", "dtype", args.dtype), ("base", "base", args.base), ("combine", "combine", args.combine),
        ("density", "density", args.density)) if value is not None}
    if args.adapter_only:
        flags["export.merge=false"] = "flag --adapter-only"
    run, record = idle_run(args.run, args.runs_dir)
    ranks: dict[str, int] = {}
    if args.adapters is not None:
        mapping, ranks = mix_mapping(run, args.adapters)
        flags[f"export.adapters={mapping}"] = f"flag --adapters {args.adapters}"
    if args.quant is not None and args.format != "gguf":
        raise UserError(f"flag --quant {args.quant}: only with --format gguf")
    if args.format == "gguf":
        flags[f"export.gguf={args.quant or 'f16'}"] = f"flag --quant {args.quant}" if args.quant else "flag --format"
    recipe = resolve_saved(run.recipe_file, args.overrides, flags).recipe
    for flag, given in (("--adapter-only", args.adapter_only), ("--base", args.base), ("--adapters", args.adapters)):
        if given and recipe.method.lora is None:
            raise UserError(f"flag {flag}: run {run.name} is a {recipe.method.kind} fine-tune, it has no adapter")
    if recipe.export.combine in EQUAL_RANK_COMBINATIONS and len(set(ranks.values())) > 1:
        given = ", ".join(f"{name}: r={rank}" for name, rank in ranks.items())
        raise UserError(f"flag --combine {recipe.export.combine}: needs adapters of equal rank, got {given}: use cat "
                        "or svd")
    if args.base and args.adapter_only:
        raise UserError("flags --base and --adapter-only: an adapter alone is not merged into any base")
    if recipe.export.base is not None:  # checked here too, before anything is submitted (reads shard headers only)
        from jobs.common.hf_files import check_transfer
        from jobs.common.hub import model_directory
        from jobs.common.run_models import base_weights

        try:
            check_transfer(base_weights(run, recipe), model_directory(recipe.export.base, None))
        except ValueError as err:
            raise UserError(f"flag --base {args.base}: {err}") from None
    run.export_source(recipe.export.checkpoint)
    return start_again(run, record, ("export",), recipe, "exports")


def mix_mapping(run: Any, text: str) -> tuple[str, dict[str, int]]:
    """--adapters copilot=0.5,team/assistant=0.5 → (a YAML mapping of experiment/name: weight, each run's LoRA rank),
    each run checked to exist with a complete final adapter of the same base as `run`."""
    from jobs.spec.rundir import COMPLETE_MARKER
    from launchers.recipe.load import resolve_saved
    from launchers.runs import find_run

    pairs: dict[str, float] = {}
    for item in text.split(","):
        name, sep, weight = item.strip().partition("=")
        try:
            value: float | None = float(weight)
        except ValueError:
            value = None
        if not (sep and name) or value is None or not math.isfinite(value):
            raise UserError(f"flag --adapters {text}: {item.strip()!r} is not RUN=WEIGHT (e.g. copilot=0.5)")
        pairs[name] = value
    base = resolve_saved(run.recipe_file).recipe.model
    resolved, ranks = {}, {}
    for name, weight in pairs.items():
        other = find_run(run.root, name)
        recipe = resolve_saved(other.recipe_file).recipe
        if recipe.method.lora is None or not (other.final / COMPLETE_MARKER).exists():
            raise UserError(f"flag --adapters: run {name} has no complete final adapter")
        if (recipe.model.name_or_path, recipe.model.config) != (base.name_or_path, base.config):
            raise UserError(f"flag --adapters: run {name} trained on {recipe.model.name_or_path}, run {run.name} on "
                            f"{base.name_or_path}: adapters of different bases do not mix")
        resolved[f"{other.experiment}/{other.name}"] = weight
        ranks[name] = recipe.method.lora.r
    return json.dumps(resolved), ranks


def cmd_eval(argv: Sequence[str]) -> int:
    parser = Parser(prog="launch eval", description=(
        "Evaluate a run again (as the chained eval stage does): HumanEval pass@k with every program in a sandbox,\n"
        "fill-in-the-middle exact match and edit similarity, held-out loss of the model and of its base. Results in\n"
        "<run>/eval/<model>-<time>/ and the run's MLflow eval run. Runs where the run ran (SLURM or this machine)."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN", help="run name, experiment/name, or a job id")
    parser.add_argument("overrides", nargs="*", metavar="eval.key=value", help="recipe overrides, e.g. "
                        "eval.fim_samples=0")
    parser.add_argument("--model", help="merged (default: the newest export), adapter (base + adapter) or base")
    parser.add_argument("--n", metavar="N", help="HumanEval samples per problem (default 1)")
    parser.add_argument("--temperature", metavar="T", help="sampling temperature (default 0: greedy)")
    parser.add_argument("--k", metavar="LIST", help="pass@k for each k, e.g. 1,10 (each at most --n)")
    parser.add_argument("--problems", metavar="N", help="the first N HumanEval problems (default: all 164; 0 skips)")
    parser.add_argument("--ranks", metavar="N", help="split the generation over N ranks of one node (default: a rank "
                        "per GPU of the recipe's nodes, 1 on CPU)")
    parser.add_argument("--engine", metavar="NAME", help="what generates: auto (default: vLLM where it is installed "
                        "and a GPU is there), transformers or vllm")
    parser.add_argument("--allow-unsandboxed", action="store_true",
                        help="where namespaces are unavailable, run model-written code with rlimits only")
    runs_arguments(parser)
    args = parser.parse_intermixed_args(argv)
    from launchers.recipe.load import resolve_saved

    flags = {f"eval.{key}={f'[{value}]' if key == 'k' else value}": f"flag --{flag} {value}" for key, flag, value in (
        ("model", "model", args.model), ("samples", "n", args.n), ("temperature", "temperature", args.temperature),
        ("k", "k", args.k), ("humaneval_problems", "problems", args.problems), ("ranks", "ranks", args.ranks),
        ("engine", "engine", args.engine)) if value is not None}
    if args.allow_unsandboxed:
        flags["eval.allow_unsandboxed=true"] = "flag --allow-unsandboxed"
    run, record = idle_run(args.run, args.runs_dir)
    recipe = resolve_saved(run.recipe_file, args.overrides, flags).recipe
    if recipe.eval.model != "base":
        run.export_source(None)
    return start_again(run, record, ("eval",), recipe, "evaluations")


def cmd_generate(argv: Sequence[str]) -> int:
    parser = Parser(prog="launch generate", description=(
        "A quick look at a run's model: the completion of a prompt (or a fill-in-the-middle), streamed as it is\n"
        "written. Runs here, in this process (on a cluster: inside srun --pty on a GPU node)."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN", help="run name, experiment/name, or a job id")
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--prompt", metavar="TEXT", help="the prompt")
    given.add_argument("--file", metavar="F", help="read the prompt from a file")
    given.add_argument("--fim-prefix", metavar="TEXT", help="fill in the middle: the code before the gap")
    parser.add_argument("--fim-suffix", metavar="TEXT", help="fill in the middle: the code after the gap")
    parser.add_argument("--model", choices=("merged", "adapter", "base"), default="merged",
                        help="merged (default: the newest export, else base + adapter), adapter or base")
    parser.add_argument("--adapter-weight", type=float, default=1.0, metavar="W",
                        help="--model adapter: scale the LoRA by W (the seed used 0.8)")
    parser.add_argument("--max-new-tokens", type=int, default=128, metavar="N")
    parser.add_argument("--temperature", type=float, default=0.0, metavar="T", help="default 0: greedy")
    runs_arguments(parser)
    args = parser.parse_args(argv)
    from jobs.spec.rundir import runs_root
    from launchers.runs import find_run

    if args.fim_suffix is not None and args.fim_prefix is None:
        raise UserError("flag --fim-suffix: give --fim-prefix too (fill in the middle needs both sides)")
    if args.adapter_weight != 1.0 and args.model != "adapter":
        raise UserError(f"flag --adapter-weight {args.adapter_weight:g}: only with --model adapter (an export's "
                        "weight is set by launch export --weight)")
    if not 0 < args.adapter_weight <= 4 or args.max_new_tokens < 1 or not 0 <= args.temperature <= 2:
        raise UserError("flags --adapter-weight (0, 4], --max-new-tokens >= 1, --temperature [0, 2]: out of range")
    prompt = args.prompt
    if args.file is not None:
        try:
            prompt = open(args.file, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"flag --file {args.file}: cannot read it ({err})") from None
    run = find_run(runs_root(args.runs_dir), args.run)
    from launchers.recipe.load import resolve_saved

    recipe = resolve_saved(run.recipe_file).recipe
    if args.model != "base":

        run.export_source(None)
    from jobs.interactive.generate import GenerateRequest, run_generate

    run_generate(run, recipe, GenerateRequest(prompt, args.fim_prefix, args.fim_suffix, args.model,
                                              args.adapter_weight, args.max_new_tokens, args.temperature))
    print()
    return 0


def cmd_judge(argv: Sequence[str]) -> int:
    parser = Parser(prog="launch judge", description=(
        "Pairwise judging: both runs' models answer the questions; an OpenAI-compatible chat-completions endpoint\n"
        "judges every pair in both orders (position-bias control). Win/tie/loss rates (from RUN_A's side) go to an\n"
        "MLflow run in RUN_A's experiment; judgments to <RUN_A>/judge/. The API key is read from $JUDGE_API_KEY\n"
        "(else $OPENAI_API_KEY) and never written anywhere. Runs here, in this process."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", metavar="RUN_A")
    parser.add_argument("run_b", metavar="RUN_B")
    parser.add_argument("--questions", required=True, metavar="FILE", help='JSON lines with "question" (or "turns")')
    parser.add_argument("--judge-url", required=True, metavar="URL", help="e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--judge-model", required=True, metavar="NAME")
    parser.add_argument("--model", choices=("merged", "adapter", "base"), default="merged",
                        help="which model of each run answers (default: the newest export, else base + adapter)")
    parser.add_argument("--max-new-tokens", type=int, default=256, metavar="N")
    runs_arguments(parser)
    args = parser.parse_args(argv)
    from pathlib import Path
    from urllib.parse import urlsplit

    from jobs.interactive.judge import read_questions
    from jobs.spec.rundir import public_uri, runs_root
    from launchers.runs import find_run

    url = urlsplit(args.judge_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UserError(f"flag --judge-url {public_uri(args.judge_url)}: expected http(s)://HOST[:PORT]/PATH")
    if url.username or url.password:
        raise UserError("flag --judge-url: carries credentials; put the key in $JUDGE_API_KEY instead")
    if args.max_new_tokens < 1:
        raise UserError(f"flag --max-new-tokens {args.max_new_tokens}: must be at least 1")
    questions = read_questions(Path(args.questions))
    root = runs_root(args.runs_dir)
    runs = [find_run(root, name) for name in (args.run_a, args.run_b)]
    if runs[0].path == runs[1].path:
        raise UserError(f"RUN_A and RUN_B are the same run ({runs[0].name}): judge two different runs")
    from launchers.recipe.load import resolve_saved

    recipes = [resolve_saved(run.recipe_file).recipe for run in runs]
    if args.model != "base":
        for run in runs:
            run.export_source(None)
    from jobs.interactive.judge import JudgeClient, answers, judge_pairs, record, summarize

    client = JudgeClient(args.judge_url, args.judge_model)
    client.check()
    answers_a, answers_b = (answers(run, recipe, questions, args.model, args.max_new_tokens)
                            for run, recipe in zip(runs, recipes, strict=True))
    rows = judge_pairs(client, questions, answers_a, answers_b)
    metrics = summarize(rows)
    out = record(runs[0], runs[1], rows, metrics, {
        "run_a": f"{runs[0].experiment}/{runs[0].name}", "run_b": f"{runs[1].experiment}/{runs[1].name}",
        "judge_url": public_uri(args.judge_url), "judge_model": args.judge_model, "model": args.model})
    print(f"{runs[0].name} vs {runs[1].name}: win {metrics['judge/win_rate']:.3f}, "
          f"tie {metrics['judge/tie_rate']:.3f}, "
          f"loss {metrics['judge/loss_rate']:.3f} over {len(rows)} questions (orders disagreed on "
          f"{metrics['judge/inconsistent_rate']:.0%}); judgments in {out}")
    return 0
