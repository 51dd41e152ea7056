"""How close llama.cpp, running an exported GGUF, comes to the transformers model the GGUF was written from.

    from jobs.export.llama_cpp_parity import code_prompts, measure
    report = measure(model_dir, gguf_path, code_prompts(Path("my-repo"), tokenizer, n=8), new_tokens=32)
    print(report.exact, "of", report.prompts, "greedy completions identical")

Each prompt is tokenized by both (the ids must agree), completed greedily by both from the same ids, and then both
score the transformers completion teacher-forced: the share of positions where their next-token argmax agrees, the
largest logit difference and the mean KL divergence (transformers → llama.cpp, nats), and, where a completion
first differs, by how much transformers preferred its token (the divergence margin). F16 reproduces the completions
except at near-ties (a margin below the logit differences); quantized types are judged by those figures. Used by
tests/integration/test_llama_cpp.py and bench/llama_cpp_parity.py; both run on CPU with one thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jobs.eval.fim_eval import code_documents, fim_examples, fim_prompt


@dataclass(frozen=True)
class Parity:
    prompts: int
    same_ids: int  # prompts that llama.cpp tokenizes to the same ids as the transformers tokenizer
    exact: int  # prompts whose greedy completion is identical
    agreed_tokens: int  # greedy tokens before the first difference, summed over the prompts
    new_tokens: int  # greedy tokens transformers wrote, summed
    top1: float  # teacher-forced: share of positions where the next-token argmax agrees
    max_logit_diff: float
    mean_kl: float
    # where a greedy completion first differs: how much transformers preferred its own token over llama.cpp's
    # (logits), the largest over the prompts; a near-tie (below the logit differences) is rounding, not a bug
    divergence_margin: float = 0.0


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str


def code_prompts(source: Path, tokenizer: Any, n: int, seed: int = 0) -> list[Prompt]:
    """Two prompts for each of up to `n` files under `source`: the code before a masked span (left to right), and
    the same span as a fill-in-the-middle question (PSM with the tokenizer's sentinels), as the FIM eval draws them."""
    prompts = []
    for example in fim_examples(code_documents(str(source)), n, seed):
        prompts.append(Prompt(f"{example.name} (left to right)", example.prefix))
        prompts.append(Prompt(f"{example.name} (FIM)", fim_prompt(example, tokenizer)))
    return prompts


def measure(model_dir: Path, gguf_path: Path, prompts: list[Prompt], new_tokens: int) -> Parity:
    """Prompts longer than the model's context (less `new_tokens`) are skipped; `prompts` counts the ones used."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jobs.export.llama_cpp import LlamaCpp

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    context = model.config.max_position_embeddings
    tally = {"prompts": 0, "same_ids": 0, "exact": 0, "agreed_tokens": 0, "new_tokens": 0}
    agreements, kls, diffs, margins = [], [], [0.0], [0.0]
    with LlamaCpp(gguf_path, context=context) as llama, torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
            if len(ids) + new_tokens > context:
                continue
            tally["prompts"] += 1
            tally["same_ids"] += llama.tokenize(prompt.text) == ids
            theirs = llama.greedy(ids, new_tokens)
            ours = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            ours = [t for t in ours[0, len(ids):].tolist() if t != tokenizer.eos_token_id]
            tally["exact"] += theirs == ours
            agreed = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            tally["agreed_tokens"] += agreed
            tally["new_tokens"] += len(ours)
            reference = model(torch.tensor([ids + ours])).logits[0].numpy()
            if agreed < min(len(ours), len(theirs)):
                row = reference[len(ids) + agreed - 1]
                margins.append(float(row[ours[agreed]] - row[theirs[agreed]]))
            candidate = llama.logits(ids + ours)
            agreements.append(reference.argmax(-1) == candidate.argmax(-1))
            kls.append(_kl(reference, candidate))
            diffs.append(float(np.abs(reference - candidate).max()))
    positions = np.concatenate(agreements) if agreements else np.zeros(0)
    return Parity(**tally, top1=float(positions.mean()) if positions.size else 0.0, max_logit_diff=max(diffs),
                  mean_kl=float(np.concatenate(kls).mean()) if kls else 0.0, divergence_margin=max(margins))


def _kl(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """KL(p || q) per row, from logits (in float64: the f16 differences are below float32's rounding)."""
    reference, candidate = reference.astype(np.float64), candidate.astype(np.float64)
    log_p = reference - np.logaddexp.reduce(reference, axis=-1, keepdims=True)
    log_q = candidate - np.logaddexp.reduce(candidate, axis=-1, keepdims=True)
    return (np.exp(log_p) * (log_p - log_q)).sum(-1)
