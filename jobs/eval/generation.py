"""Batched generation with transformers: left padding, stop sequences, n samples per prompt, reproducible; and the
seam the eval stage generates through, whichever engine does the work.

    from jobs.eval.generation import GenerationSettings, generate
    texts = generate(model, tokenizer, prompts, GenerationSettings(max_new_tokens=256, temperature=0.2, samples=20,
                     stop=STOP_SEQUENCES))      # texts[i] holds the `samples` completions of prompts[i]

    engine = TransformersEngine(model, tokenizer)          # or jobs.eval.vllm_engine.VllmEngine (GPU, own process)
    humaneval, fim = engine.generate([GenerationRequest(prompts, settings), GenerationRequest(fim_prompts, greedy)])

Prompts are sorted by length and batched (`batch_size` sequences at a time, samples included), so padding stays
small; a sequence stops at its first stop sequence (transformers' stop_strings) or at max_new_tokens, and the
returned text is cut just before the stop sequence. Temperature 0 is greedy decoding (then one sample is the only
meaningful count). A progress line goes to stdout every `progress_every_s` seconds.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 0.95
    top_k: int = 0  # 0: off (nucleus sampling alone, as HumanEval's sampling is reported); the same in both engines
    samples: int = 1
    batch_size: int = 8
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int = 0
    progress_every_s: float = 30.0


@dataclass(frozen=True)
class GenerationRequest:
    """Prompts that share their settings (HumanEval's, or the FIM eval's)."""
    prompts: Sequence[str]
    settings: GenerationSettings


class Engine(Protocol):
    name: str

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[list[str]]]:
        """For each request, `settings.samples` completions of every prompt, in prompt order."""
        ...


class TransformersEngine:
    """`generate` below, on a model loaded in this process."""
    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[list[str]]]:
        return [generate(self.model, self.tokenizer, r.prompts, r.settings) for r in requests]


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def engine_name(requested: str) -> str:
    """transformers or vllm: `auto` is vLLM when it is installed and a GPU is there. An explicit `vllm` without vLLM
    installed is an error here, before any model is loaded."""
    installed = vllm_installed()
    if requested == "vllm" and not installed:
        raise RuntimeError("eval.engine=vllm: vLLM is not installed here (pip install vllm on the GPU nodes, or set "
                           "eval.engine=auto or transformers)")
    if requested == "auto":
        return "vllm" if installed and torch.cuda.is_available() else "transformers"
    return requested


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop sequence."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: Sequence[str], settings: GenerationSettings,
             on_text: Callable[[int, str], None] | None = None) -> list[list[str]]:
    """`settings.samples` completions for every prompt, in prompt order. `on_text(prompt_index, text)` is called as
    each completion is ready."""
    model.eval()
    device = next(model.parameters()).device
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(settings.seed)
    jobs = sorted(((i, s) for i in range(len(prompts)) for s in range(settings.samples)),
                  key=lambda job: len(prompts[job[0]]))
    results: list[list[str]] = [[""] * settings.samples for _ in prompts]
    sampling = settings.temperature > 0
    last_report = time.monotonic()
    try:
        for start in range(0, len(jobs), settings.batch_size):
            batch = jobs[start:start + settings.batch_size]
            encoded = tokenizer([prompts[i] for i, _ in batch], return_tensors="pt", padding=True,
                                add_special_tokens=False).to(device)
            kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "do_sample": sampling,
                                      "pad_token_id": tokenizer.pad_token_id}
            if sampling:
                kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
            if settings.stop:
                kwargs.update(stop_strings=list(settings.stop), tokenizer=tokenizer)
            output = model.generate(**encoded, **kwargs)
            new_tokens = output[:, encoded["input_ids"].shape[1]:]
            for (prompt_index, sample), tokens in zip(batch, new_tokens, strict=True):
                text = cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), settings.stop)
                results[prompt_index][sample] = text
                if on_text is not None:
                    on_text(prompt_index, text)
            if time.monotonic() - last_report > settings.progress_every_s:
                last_report = time.monotonic()
                print(f"[generate] {min(start + len(batch), len(jobs))}/{len(jobs)} completions", flush=True)
    finally:
        tokenizer.padding_side = padding_side
    return results
