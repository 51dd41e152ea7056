"""Generation throughput of the eval stage's engines on HumanEval prompts: transformers (in process) vs vLLM (its own
process, as the eval stage runs it), same model, prompts and settings.

    .venv/bin/python bench/generation_engines.py                          # tiny-starcoder, 16 problems, 3 repeats
    .venv/bin/python bench/generation_engines.py --recipe full-ft starcoderbase-1b --problems 164 --samples 10 \
        --temperature 0.2 --max-new-tokens 384                            # on a GPU node with the weights cached

Each repeat times what an evaluation pays: for transformers, loading the model and generating; for vLLM, the whole
child process (imports, engine start, CUDA graphs, generation). Tokens are those of the completions' text as both
engines return it (cut at the stop sequences), re-encoded with the recipe's tokenizer: the same measure for both, so
tokens/s compares the same work (a random model's text can re-encode to more tokens than it generated). Medians of
--repeats; the ratio is against transformers, measured in the same process. Without vLLM (or CUDA) its row says so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common.model import base_model_path  # noqa: E402
from jobs.common.run_models import RunModel, load_chosen  # noqa: E402
from jobs.common.tokenizer import load_tokenizer  # noqa: E402
from jobs.eval.generation import Engine, GenerationRequest, GenerationSettings, TransformersEngine  # noqa: E402
from jobs.eval.humaneval import STOP_SEQUENCES, load_problems  # noqa: E402
from jobs.spec.context import RankContext  # noqa: E402
from launchers.recipe.load import resolve  # noqa: E402


def measure(make: Callable[[], Engine], request: GenerationRequest, tokenizer: Any) -> tuple[float, int, int]:
    """(seconds, completions, text tokens) of one engine start and generation."""
    started = time.monotonic()
    (texts,) = make().generate([request])
    seconds = time.monotonic() - started
    completions = [c for samples in texts for c in samples]
    tokens = sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in completions)
    return seconds, len(completions), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", nargs=2, default=["full-ft", "tiny-starcoder"], metavar=("METHOD", "MODEL"))
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="recipe overrides, e.g. model.config=...")
    args = parser.parse_args()

    import torch

    from jobs.eval.generation import vllm_installed

    recipe = resolve(*args.recipe, args.overrides).recipe
    tokenizer = load_tokenizer(recipe)
    workdir = Path(tempfile.mkdtemp(prefix="bench-generation-"))
    context = RankContext(workdir)
    chosen = RunModel(Path(base_model_path(recipe, context, tokenizer)), None, False, "bench")
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  samples=args.samples, batch_size=recipe.eval.batch_size, stop=STOP_SEQUENCES)
    request = GenerationRequest([p.prompt for p in load_problems()[:args.problems]], settings)
    engines: dict[str, Callable[[], Engine]] = {
        "transformers": lambda: TransformersEngine(load_chosen(chosen, recipe, context)[0], tokenizer)}
    missing = None if vllm_installed() and torch.cuda.is_available() else "vLLM and CUDA needed"
    if missing is None:
        from jobs.eval.vllm_engine import VllmEngine

        engines["vllm"] = lambda: VllmEngine(chosen, recipe, tokenizer, context)

    print(f"{recipe.name}: {args.problems} HumanEval prompts × {args.samples}, max {args.max_new_tokens} new tokens, "
          f"temperature {args.temperature}, {args.repeats} repeats, device "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}")
    print(f"{'engine':<14}{'median s':>10}{'completions':>13}{'text tokens':>13}{'tokens/s':>10}{'vs transformers':>17}")
    baseline = None
    for name, make in engines.items():
        runs = [measure(make, request, tokenizer) for _ in range(args.repeats)]
        seconds = statistics.median(r[0] for r in runs)
        tokens = int(statistics.median(r[2] for r in runs))
        rate = tokens / seconds
        baseline = baseline or rate
        print(f"{name:<14}{seconds:>10.2f}{runs[0][1]:>13}{tokens:>13}{rate:>10.1f}{rate / baseline:>16.2f}×")
    if missing:
        print(f"{'vllm':<14}{'—':>10}  not measured: {missing}")


if __name__ == "__main__":
    main()
