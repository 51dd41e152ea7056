"""The eval stage: HumanEval pass@k in the sandbox, FIM completion and held-out loss, logged to the run's MLflow.

    launch eval RUN [--model merged|adapter|base] [--n 20 --temperature 0.2 --k 1,10]   # or chained after export

On eval.ranks ranks of one node (default: a rank per GPU, 1 on CPU) each rank generates every world-th prompt of
HumanEval and of the FIM eval, in one go; rank 0 gathers the completions (gloo), runs the sandbox, the held-out loss
and the logging. What generates is eval.engine: transformers in this process (jobs.eval.generation), or vLLM in a
child process on the rank's GPU (jobs.eval.vllm_engine; `auto` takes it where vLLM is installed and CUDA is there),
after which rank 0 loads the model with transformers for the held-out loss. Rank 0 then loads the base, alone, for
the same held-out loss and FIM spans: what training changed.

What the recipe's `eval` section asks for, on one model (eval.model):
    merged   the newest export's model/ (full fine-tunes without an export: final/; LoRA without one: as adapter)
    adapter  the base with final/ attached through PEFT (QLoRA: on the 4-bit base it trained on)
    base     the model before training

Measured, each skipped when its setting is 0/false:
    HumanEval  the first eval.humaneval_problems problems, eval.samples completions each (batched, stop sequences),
               every program run in its own sandbox (jobs.eval.sandbox): eval/humaneval_pass_at_<k>; per problem, with
               the failure kind, in humaneval.jsonl
    FIM        eval.fim_samples masked spans of held-out code (jobs.eval.fim_eval): eval.fim_source, else the files
               held out of a source directory, else HumanEval's programs; tokenizers with FIM sentinels only:
               eval/fim_exact_match, eval/fim_edit_similarity (and per file type); per example in fim.jsonl; the
               base's (greedy, transformers, rank 0) as eval/base_fim_* and base_fim.jsonl
    held-out   loss and perplexity on the prepared eval split, for this model and the base:
               eval/heldout_loss, eval/heldout_perplexity, eval/base_heldout_loss, eval/base_heldout_perplexity

Results go to <run>/eval/<model>-<timestamp>/ (results.json — with the engine and generation_seconds, vLLM's engine
start included — and the per-item files, never overwritten) and to the eval stage's MLflow run (metrics at step 0,
the files as artifacts). MLflow metric names cannot hold "@", hence pass_at_1.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jobs.common.device import claim_gpu
from jobs.common.run_models import RunModel, choose_run_model, load_chosen, load_run_model
from jobs.eval.fim_eval import fim_prompt
from jobs.eval.generation import Engine, GenerationRequest, GenerationSettings, TransformersEngine, engine_name
from jobs.eval.humaneval import STOP_SEQUENCES
from jobs.spec.context import RankContext
from jobs.spec.plan import Plan
from jobs.spec.rundir import RunDir, timestamp, write_atomic
from jobs.spec.schema import EvalSpec, Recipe


def evaluate(recipe: Recipe, plan: Plan, context: RankContext) -> str:
    """The stage: every rank generates its share, rank 0 scores, writes the results and logs them."""
    from jobs.track.summary import eval_summary
    from jobs.track.tracker import Tracker

    claim_gpu(context)
    run = RunDir(context.run_dir)
    with Tracker(context, "eval", recipe, plan) as tracker:
        out, record = evaluate_run(run, recipe, context)
        if out is not None:
            tracker.log_metrics({f"eval/{name}": value for name, value in record["metrics"].items()}, step=0)
            tracker.log_summary(eval_summary(record["metrics"]))
            tracker.set_tags({"clusterft.eval.engine": record["engine"]})
            for path in sorted(out.iterdir()):
                tracker.log_artifact(path, "results")
    return str(out or "")


def evaluate_run(run: RunDir, recipe: Recipe, context: RankContext) -> tuple[Path | None, dict[str, Any]]:
    """(results directory, the record written to its results.json) on rank 0; (None, {}) on the other ranks, which
    only generate."""
    from jobs.common.tokenizer import load_tokenizer
    from jobs.eval.humaneval import load_problems

    spec = recipe.eval
    engine_wanted = engine_name(spec.engine)  # an explicit vllm where it is not installed fails here, first
    _join_ranks(context)
    out = run.evals / f"{spec.model}-{timestamp()}"
    tokenizer = load_tokenizer(recipe)
    problems = load_problems()[:spec.humaneval_problems] if spec.humaneval_problems != 0 else []
    chosen = choose_run_model(run, recipe, spec.model)
    examples = fim_examples_for(tokenizer, recipe, context) if spec.fim_samples else []
    examples = fitted(examples, tokenizer, chosen.path, spec.fim_max_new_tokens)
    requests = []
    if problems:
        requests.append(GenerationRequest([p.prompt for p in problems], GenerationSettings(
            max_new_tokens=spec.max_new_tokens, temperature=spec.temperature, samples=spec.samples,
            batch_size=spec.batch_size, stop=STOP_SEQUENCES, seed=recipe.training.seed + context.rank)))
    if examples:
        requests.append(GenerationRequest([fim_prompt(e, tokenizer) for e in examples], GenerationSettings(
            max_new_tokens=spec.fim_max_new_tokens, batch_size=spec.batch_size, seed=recipe.training.seed)))
    engine, model = choose_engine(engine_wanted, chosen, recipe, tokenizer, context)
    described = chosen.described
    if context.is_main:
        out.mkdir(parents=True, exist_ok=False)
        print(f"[eval] {recipe.name}: evaluating {described} on {context.world_size} rank(s), generating with "
              f"{engine.name}", flush=True)
        if problems:
            print(f"[eval] HumanEval: {len(problems)} problems × {spec.samples} samples", flush=True)
        if examples:
            print(f"[eval] FIM: {len(examples)} masked spans", flush=True)
    started = time.monotonic()
    completions = generate_split(engine, requests, context)
    generation_s = time.monotonic() - started
    if completions is None:
        return None, {}
    metrics: dict[str, float] = {}
    if problems:
        metrics |= score_humaneval(problems, completions.pop(0), spec, out)
    if examples:
        metrics |= score_fim_examples(examples, completions.pop(0), out)
    rows = heldout_rows(recipe, context) if spec.heldout else None
    if rows is not None:
        if model is None:  # vLLM generated in its own process: the model itself, once, for the loss
            model, _ = load_chosen(chosen, recipe, context)
        metrics |= heldout_metrics(model, rows, spec.batch_size)
    if spec.model != "base" and (rows is not None or examples):  # the base on the same data: what training changed
        del model  # one model in memory at a time
        base, _ = load_run_model(run, recipe, "base", context)
        if rows is not None:
            metrics |= heldout_metrics(base, rows, spec.batch_size, "base_")
        if examples:
            base_completions = TransformersEngine(base, tokenizer).generate([requests[-1]])[0]
            metrics |= {f"base_{name}": value for name, value in
                        score_fim_examples(examples, base_completions, out, "base_fim.jsonl").items()}
    record = {"model": spec.model, "evaluated": described, "ranks": context.world_size, "engine": engine.name,
              "settings": spec.model_dump(mode="json"), "metrics": metrics,
              "generation_seconds": round(generation_s, 1), "seconds": round(time.monotonic() - started, 1)}
    write_atomic(out / "results.json", json.dumps(record, indent=2) + "\n")
    for name, value in metrics.items():
        print(f"[eval] {name} = {value:.4f}", flush=True)
    return out, record


def choose_engine(wanted: str, chosen: RunModel, recipe: Recipe, tokenizer: Any,
                  context: RankContext) -> tuple[Engine, Any]:
    """(the engine, the model when it was loaded in this process). What vLLM cannot serve as trained is generated
    with transformers when the engine was left to `auto`, and an error when vllm was asked for."""
    if wanted == "vllm":
        from jobs.eval.vllm_engine import VllmEngine, unsupported

        reason = unsupported(chosen, recipe)
        if reason is None:
            return VllmEngine(chosen, recipe, tokenizer, context), None
        if recipe.eval.engine == "vllm":
            raise RuntimeError(f"eval.engine=vllm: {reason}; set eval.engine=transformers (or auto)")
        if context.is_main:
            print(f"[eval] generating with transformers: {reason}", flush=True)
    model, _ = load_chosen(chosen, recipe, context)
    return TransformersEngine(model, tokenizer), model


def _join_ranks(context: RankContext) -> None:
    """A gloo process group when the generation is split (objects are gathered on CPU, whatever the devices)."""
    import torch.distributed as dist

    if context.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")


def generate_split(engine: Engine, requests: Sequence[GenerationRequest],
                   context: RankContext) -> list[list[list[str]]] | None:
    """Rank r generates every request's prompts[r::world]; rank 0 gets every completion of every request, in prompt
    order; the other ranks None. The process group ends here, on every rank."""
    world = context.world_size
    mine = engine.generate([GenerationRequest(r.prompts[context.rank::world], r.settings) for r in requests])
    if world == 1:
        return mine
    import torch.distributed as dist

    parts: list[Any] | None = [None] * world if context.is_main else None
    dist.gather_object(mine, parts, dst=0)
    # The split is over: rank 0 scores alone (the sandbox, held-out loss), and the other ranks end now rather than
    # wait for it in the stage's final barrier, which a long scoring pass would time out.
    dist.destroy_process_group()
    if parts is None:
        return None
    merged: list[list[list[str]]] = [[[] for _ in r.prompts] for r in requests]
    for rank, part in enumerate(parts):
        for index, completions in enumerate(part):
            merged[index][rank::world] = completions
    return merged


def score_humaneval(problems: Sequence[Any], completions: Sequence[Sequence[str]], spec: EvalSpec,
                    out: Path) -> dict[str, float]:
    """Every completion run as its own sandboxed program; pass@k; one row per sample in humaneval.jsonl."""
    from jobs.eval.humaneval import program, score
    from jobs.eval.sandbox import Limits, SandboxUnavailable, run_many

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


def fim_examples_for(tokenizer: Any, recipe: Recipe, context: RankContext) -> list[Any]:
    """The masked spans to ask for: from eval.fim_source, else from the files the prepare stage held out of a source
    directory, else from HumanEval's programs; none when the tokenizer has no FIM sentinels (said once, by rank 0)."""
    from jobs.eval.fim_eval import code_documents, fim_examples
    from jobs.prepare.fim import fim_tokens
    from jobs.prepare.stage import ensure_prepared, read_report

    try:
        fim_tokens(tokenizer)
    except ValueError:
        if context.is_main:
            print("[eval] FIM: skipped, the tokenizer has no FIM sentinels", flush=True)
        return []
    spec, root = recipe.eval, Path(recipe.data.source)
    held_out = []
    if spec.fim_source is None and root.is_dir():  # the files prepare held out, by path
        held_out = read_report(ensure_prepared(recipe, context)).get("heldout_files", [])
    if held_out:
        documents = [(name, (root / name).read_text(encoding="utf-8")) for name in held_out]
    else:
        documents = code_documents(spec.fim_source)
    return fim_examples(documents, spec.fim_samples, recipe.training.seed)


def fitted(examples: list[Any], tokenizer: Any, model_dir: Path, new_tokens: int) -> list[Any]:
    """The examples with prompts that leave room for `new_tokens` in the model's context (config.json)."""
    from jobs.common.hf_files import context_length
    from jobs.eval.fim_eval import fit_prompt

    config = model_dir / "config.json"
    limit = context_length(json.loads(config.read_text(encoding="utf-8"))) if config.is_file() else None
    if limit is None:
        return examples
    return [fit_prompt(example, tokenizer, limit - new_tokens) for example in examples]


def score_fim_examples(examples: Sequence[Any], completions: Sequence[Sequence[str]], out: Path,
                       name: str = "fim.jsonl") -> dict[str, float]:
    from jobs.eval.fim_eval import score_fim

    metrics, rows = score_fim(examples, [c[0] for c in completions])
    _write_jsonl(out / name, rows)
    return metrics


def heldout_rows(recipe: Recipe, context: RankContext) -> Any:
    """The prepared eval split (built if the cache is missing), or None when the recipe has none."""
    from jobs.prepare.stage import ensure_prepared, load_prepared

    prepared = load_prepared(ensure_prepared(recipe, context))
    if "eval" not in prepared:
        print("[eval] held-out loss: skipped, the recipe has no eval split (data.eval_fraction or eval_source)",
              flush=True)
        return None
    return prepared["eval"]


def heldout_metrics(model: Any, rows: Any, batch_size: int, prefix: str = "") -> dict[str, float]:
    from jobs.eval.heldout import heldout_loss

    result = heldout_loss(model, rows, batch_size)
    return {f"{prefix}heldout_loss": result.loss, f"{prefix}heldout_perplexity": result.perplexity}


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
