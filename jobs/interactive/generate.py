"""`launch generate`: a quick look at what a run's model writes, streamed token by token to the terminal.

    launch generate RUN --prompt 'def fib(n):'                       # the merged export (else base + adapter)
    launch generate RUN --file prompt.py --model adapter --adapter-weight 0.8
    launch generate RUN --fim-prefix 'def f(x):\n    ' --fim-suffix '\n    return y\n'   # fill in the middle

Runs on this machine, in this process (on a cluster: inside `srun --pty` on a GPU node). Greedy unless
--temperature is given; stops at the end-of-sequence token or after --max-new-tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.spec.context import RankContext
from jobs.spec.rundir import RunDir
from jobs.spec.schema import Recipe


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str | None = None
    fim_prefix: str | None = None
    fim_suffix: str | None = None
    model: str = "merged"
    adapter_weight: float = 1.0
    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0


def run_generate(run: RunDir, recipe: Recipe, request: GenerateRequest) -> str:
    """Stream the completion to stdout; returns it."""
    import sys

    import torch
    from transformers import TextStreamer

    from jobs.common.run_models import load_run_model
    from jobs.common.tokenizer import load_tokenizer
    from jobs.eval.fim_eval import psm_prompt

    tokenizer = load_tokenizer(recipe)
    if request.prompt is None:
        prompt = psm_prompt(request.fim_prefix or "", request.fim_suffix or "", tokenizer)
    else:
        prompt = request.prompt
    model, described = load_run_model(run, recipe, request.model, RankContext(run.path),
                                      adapter_weight=request.adapter_weight)
    print(f"[generate] {described}", file=sys.stderr, flush=True)
    encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(next(model.parameters()).device)
    torch.manual_seed(request.seed)
    sampling = request.temperature > 0
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    if request.prompt is not None:
        print(prompt, end="", flush=True)
    with torch.no_grad():
        output = model.generate(**encoded, max_new_tokens=request.max_new_tokens, do_sample=sampling,
                                **({"temperature": request.temperature} if sampling else {}),
                                pad_token_id=tokenizer.pad_token_id, streamer=streamer)
    return str(tokenizer.decode(output[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True))
