"""The eval stage: HumanEval pass@k in the sandbox, FIM completion and held-out loss, logged to the run's MLflow.

    launch eval RUN [--model merged|adapter|base] [--n 20 --temperature 0.2 --k 1,10]   # or chained after export

On eval.ranks ranks of one node (default: a rank per GPU, 1 on CPU) each rank loads the model and generates every
world-th prompt; rank 0 gathers the completions (gloo), runs the sandbox, the held-out loss and the logging.

What the recipe's `eval` section asks for, on one model (eval.model):
    merged   the newest export's model/ (full fine-tunes without an export: final/; LoRA without one: as adapter)
    adapter  the base with final/ attached through PEFT (QLoRA: on the 4-bit base it trained on)
    base     the model before training

Measured, each skipped when its setting is 0/false:
    HumanEval  the first eval.humaneval_problems problems, eval.samples completions each (batched, stop sequences),
               every program run in its own sandbox (jobs.sandbox): eval/humaneval_pass_at_<k>; per problem, with
               the failure kind, in humaneval.jsonl
    FIM        eval.fim_samples masked spans of held-out code (jobs.fim_eval), tokenizers with FIM sentinels only:
               eval/fim_exact_match, eval/fim_edit_similarity (and per file type); per example in fim.jsonl
    held-out   loss and perplexity on the prepared eval split, for this model and the base:
               eval/heldout_loss, eval/heldout_perplexity, eval/base_heldout_loss, eval/base_heldout_perplexity

Results go to <run>/eval/<model>-<timestamp>/ (results.json + the per-item files, never overwritten) and to the eval
stage's MLflow run (metrics at step 0, the files as artifacts). MLflow metric names cannot hold "@", hence pass_at_1.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jobs.context import RankContext
from jobs.generation import GenerationSettings, generate
from jobs.humaneval import STOP_SEQUENCES
from launchers.plan import Plan
from launchers.recipe.schema import EvalSpec, Recipe
from launchers.rundir import RunDir, timestamp, write_atomic

EVAL_DIR = "eval"


def evaluate(recipe: Recipe, plan: Plan, context: RankContext) -> str:
    """The stage: every rank generates its share, rank 0 scores, writes the results and logs them."""
    from jobs.tracking import Tracker

    run = RunDir(context.run_dir)
    with Tracker(context, "eval", recipe, plan) as tracker:
        out, metrics = evaluate_run(run, recipe, context)
        if out is not None:
            tracker.log_metrics({f"eval/{name}": value for name, value in metrics.items()}, step=0)
            for path in sorted(out.iterdir()):
                tracker.log_artifact(path, "results")
    return str(out or "")


def evaluate_run(run: RunDir, recipe: Recipe, context: RankContext) -> tuple[Path | None, dict[str, float]]:
    """(results directory, metrics) on rank 0; (None, {}) on the other ranks, which only generate."""
    from jobs.humaneval import load_problems
    from jobs.model import load_tokenizer
    from jobs.run_models import load_run_model

    spec = recipe.eval
    _join_ranks(context)
    out = run.path / EVAL_DIR / f"{spec.model}-{timestamp()}"
    if context.is_main:
        out.mkdir(parents=True, exist_ok=False)
    tokenizer = load_tokenizer(recipe)
    model, described = load_run_model(run, recipe, spec.model, context)
    if context.is_main:
        print(f"[eval] {recipe.name}: evaluating {described} on {context.world_size} rank(s)", flush=True)
    metrics: dict[str, float] = {}
    started = time.monotonic()
    if spec.humaneval_problems != 0:
        problems = load_problems()[:spec.humaneval_problems]
        settings = GenerationSettings(max_new_tokens=spec.max_new_tokens, temperature=spec.temperature,
                                      samples=spec.samples, batch_size=spec.batch_size, stop=STOP_SEQUENCES,
                                      seed=recipe.training.seed + context.rank)
        if context.is_main:
            print(f"[eval] HumanEval: {len(problems)} problems × {spec.samples} samples", flush=True)
        completions = generate_split(model, tokenizer, [p.prompt for p in problems], settings, context)
        if completions is not None:
            metrics |= score_humaneval(problems, completions, spec, out)
    if spec.fim_samples:
        metrics |= fim(model, tokenizer, spec, out, recipe.training.seed, context)
    if not context.is_main:
        return None, {}
    rows = heldout_rows(recipe, context) if spec.heldout else None
    if rows is not None:
        metrics |= heldout_metrics(model, rows, spec.batch_size)
        if spec.model != "base":  # the same data through the model before training, one model in memory at a time
            del model
            base, _ = load_run_model(run, recipe, "base", context)
            metrics |= heldout_metrics(base, rows, spec.batch_size, "base_")
    record = {"model": spec.model, "evaluated": described, "ranks": context.world_size,
              "settings": spec.model_dump(mode="json"), "metrics": metrics,
              "seconds": round(time.monotonic() - started, 1)}
    write_atomic(out / "results.json", json.dumps(record, indent=2) + "\n")
    for name, value in metrics.items():
        print(f"[eval] {name} = {value:.4f}", flush=True)
    return out, metrics


def _join_ranks(context: RankContext) -> None:
    """A gloo process group when the generation is split (objects are gathered on CPU, whatever the devices)."""
    import torch.distributed as dist

    if context.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")


def generate_split(model: Any, tokenizer: Any, prompts: Sequence[str], settings: GenerationSettings,
                   context: RankContext) -> list[list[str]] | None:
    """Rank r generates prompts[r::world]; rank 0 gets every completion, in prompt order; the others None."""
    mine = generate(model, tokenizer, list(prompts[context.rank::context.world_size]), settings)
    if context.world_size == 1:
        return mine
    import torch.distributed as dist

    parts: list[Any] | None = [None] * context.world_size if context.is_main else None
    dist.gather_object(mine, parts, dst=0)
    if parts is None:
        return None
    merged: list[list[str]] = [[] for _ in prompts]
    for rank, part in enumerate(parts):
        merged[rank::context.world_size] = part
    return merged


def score_humaneval(problems: Sequence[Any], completions: Sequence[Sequence[str]], spec: EvalSpec,
                    out: Path) -> dict[str, float]:
    """Every completion run as its own sandboxed program; pass@k; one row per sample in humaneval.jsonl."""
    from jobs.humaneval import program, score
    from jobs.sandbox import Limits, SandboxUnavailable, run_many

    programs = [program(p, c) for p, samples in zip(problems, completions, strict=True) for c in samples]
    try:
        outcomes = run_many(programs, timeout_s=spec.timeout_s, limits=Limits(), workers=spec.workers,
                            allow_network=spec.allow_unsandboxed)
    except SandboxUnavailable as err:
        raise SandboxUnavailable(f"{err}: HumanEval runs model-written code; set eval.allow_unsandboxed=true to "
                                 "run it with rlimits only (no network or file isolation), or "
                                 "eval.humaneval_problems=0 to skip it") from None
    results: dict[str, list[bool]] = {}
    rows = []
    for index, problem in enumerate(problems):
        mine = outcomes[index * spec.samples:(index + 1) * spec.samples]
        results[problem.task_id] = [o.passed for o in mine]
        rows += [{"task_id": problem.task_id, "sample": s, "passed": o.passed, "kind": o.kind, "detail": o.detail,
                  "completion": completions[index][s]} for s, o in enumerate(mine)]
    _write_jsonl(out / "humaneval.jsonl", rows)
    return {f"humaneval_pass_at_{name.removeprefix('pass@')}": value
            for name, value in score(results, spec.k).items()}


def fim(model: Any, tokenizer: Any, spec: EvalSpec, out: Path, seed: int, context: RankContext) -> dict[str, float]:
    from jobs.fim import fim_tokens
    from jobs.fim_eval import code_documents, fim_examples, fim_prompt, score_fim

    try:
        fim_tokens(tokenizer)
    except ValueError:
        if context.is_main:
            print("[eval] FIM: skipped, the tokenizer has no FIM sentinels", flush=True)
        return {}
    examples = fim_examples(code_documents(spec.fim_source), spec.fim_samples, seed)
    if context.is_main:
        print(f"[eval] FIM: {len(examples)} masked spans", flush=True)
    settings = GenerationSettings(max_new_tokens=spec.fim_max_new_tokens, samples=1, batch_size=spec.batch_size,
                                  seed=seed)
    completions = generate_split(model, tokenizer, [fim_prompt(e, tokenizer) for e in examples], settings, context)
    if completions is None:
        return {}
    metrics, rows = score_fim(examples, [c[0] for c in completions])
    _write_jsonl(out / "fim.jsonl", rows)
    return metrics


def heldout_rows(recipe: Recipe, context: RankContext) -> Any:
    """The prepared eval split (built if the cache is missing), or None when the recipe has none."""
    from jobs.prepare import ensure_prepared, load_prepared

    prepared = load_prepared(ensure_prepared(recipe, context))
    if "eval" not in prepared:
        print("[eval] held-out loss: skipped, the recipe has no eval split (data.eval_fraction or eval_source)",
              flush=True)
        return None
    return prepared["eval"]


def heldout_metrics(model: Any, rows: Any, batch_size: int, prefix: str = "") -> dict[str, float]:
    from jobs.heldout import heldout_loss

    result = heldout_loss(model, rows, batch_size)
    return {f"{prefix}heldout_loss": result.loss, f"{prefix}heldout_perplexity": result.perplexity}


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
