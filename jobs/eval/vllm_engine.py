"""Generation with vLLM for the eval stage on GPUs (eval.engine: vllm, or auto where vLLM is installed and CUDA is).

    engine = VllmEngine(choose_run_model(run, recipe, "merged"), recipe, tokenizer, context)
    humaneval, fim = engine.generate([GenerationRequest(prompts, settings), GenerationRequest(fim_prompts, greedy)])

Each rank runs vLLM in a child process of its own, on its own GPU (the rank's entry of CUDA_VISIBLE_DEVICES), with
the torch.distributed variables of the job removed: the engine starts a one-GPU world of its own and never meets the
gloo group the ranks gather completions over. All of a rank's requests go to one child, so the model is loaded once;
when the child exits its GPU memory is gone, and the parent can load the model with transformers for the held-out
loss. The child is this file:

    python -m jobs.eval.vllm_engine REQUEST.json RESULT.json      # what VllmEngine starts; not meant to be run by hand

Prompts travel as token ids, encoded by the parent exactly as the transformers engine encodes them (no special
tokens added), so both engines see the same inputs. vLLM leaves stop strings out of the text, as `generate` does;
greedy decoding (temperature 0) asks vLLM for one completion and repeats it `samples` times (vLLM refuses n > 1
without sampling, and greedy samples are identical anyway). An adapter is served through vLLM's LoRA support (QLoRA:
on the base quantized by vLLM's bitsandbytes loader, always nf4 with double quantization); the eval stage's default,
the merged export, needs none. What vLLM cannot serve as it was trained (`unsupported`: LoRA bias terms, another
4-bit format, ranks over 512) is generated with transformers under eval.engine=auto, and an error under vllm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from jobs.common.run_models import RunModel
from jobs.eval.generation import GenerationRequest, GenerationSettings
from jobs.spec.context import DISTRIBUTED_VARIABLES, RankContext
from jobs.spec.schema import Recipe

# LoRA ranks vLLM compiles its kernels for: the adapter's rank is rounded up to the next one.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class VllmEngine:
    name = "vllm"

    def __init__(self, chosen: RunModel, recipe: Recipe, tokenizer: Any, context: RankContext) -> None:
        self.options = engine_options(chosen, recipe)
        self.adapter = None if chosen.adapter is None else str(chosen.adapter)
        self.tokenizer = tokenizer
        self.environment = child_environment(os.environ, context.local_rank)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[list[str]]]:
        prompts = sum(len(r.prompts) for r in requests)
        if prompts == 0:  # e.g. a rank with no share of a short eval: no engine to start
            return [[] for _ in requests]
        payload = {"llm": self.options, "adapter": self.adapter, "requests": [
            {"prompt_token_ids": [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in r.prompts],
             "settings": asdict(r.settings)} for r in requests]}
        device = self.environment["CUDA_VISIBLE_DEVICES"] or "none visible"
        print(f"[generate] vLLM on GPU {device}: {prompts} prompts", flush=True)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="clusterft-vllm-") as tmp:
            request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
            request.write_text(json.dumps(payload))
            code = subprocess.run([sys.executable, "-m", "jobs.eval.vllm_engine", str(request), str(result)],
                                  env=self.environment, check=False).returncode
            if code != 0 or not result.exists():
                raise RuntimeError(f"vLLM generation failed (exit {code}; its output is in this rank's log): set "
                                   "eval.engine=transformers to generate with transformers instead")
            completions: list[list[list[str]]] = json.loads(result.read_text())["completions"]
        print(f"[generate] vLLM: {prompts} prompts in {time.monotonic() - started:.1f} s (engine start included)",
              flush=True)
        return completions


def unsupported(chosen: RunModel, recipe: Recipe) -> str | None:
    """Why vLLM cannot generate with `chosen` as it was trained, or None when it can."""
    lora, quant = recipe.method.lora, recipe.method.quantization
    if chosen.adapter is not None and lora is not None and lora.bias != "none":
        return f"vLLM serves LoRA adapters without bias terms (method.lora.bias is {lora.bias})"
    if chosen.quantized and quant is not None and (quant.quant_type, quant.double_quant) != ("nf4", True):
        return (f"vLLM quantizes a QLoRA base to nf4 with double quantization, not as it was trained "
                f"({quant.quant_type}, double_quant {quant.double_quant})")
    if chosen.adapter is not None:
        rank = adapter_rank(chosen.adapter)
        if rank > VLLM_LORA_RANKS[-1]:
            return f"vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}, the adapter's is {rank}"
    return None


def engine_options(chosen: RunModel, recipe: Recipe) -> dict[str, Any]:
    """vllm.LLM's keyword arguments for `chosen`: the weights, how they are quantized, room for its adapter."""
    from jobs.common.tokenizer import tokenizer_source

    tokenizer, revision = tokenizer_source(recipe)
    options: dict[str, Any] = {
        "model": str(chosen.path), "tokenizer": tokenizer, "dtype": recipe.model.dtype,
        "seed": recipe.training.seed, "trust_remote_code": recipe.model.trust_remote_code,
        "gpu_memory_utilization": recipe.eval.vllm_gpu_memory_utilization}
    if revision is not None:
        options["tokenizer_revision"] = revision
    if chosen.quantized:
        options["quantization"] = "bitsandbytes"
    if chosen.adapter is not None:
        rank = adapter_rank(chosen.adapter)
        options |= {"enable_lora": True, "max_loras": 1,
                    "max_lora_rank": next(slot for slot in VLLM_LORA_RANKS if slot >= rank)}
    return options


def adapter_rank(adapter: Path) -> int:
    """The adapter's largest LoRA rank (adapter_config.json: r, and rank_pattern's per-module ranks)."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    return max([int(config["r"]), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def child_environment(environ: Mapping[str, str], local_rank: int) -> dict[str, str]:
    """This environment without the job's torch.distributed world, with only this rank's GPU visible, and this
    project importable (`python -m jobs.eval.vllm_engine` from wherever the job runs)."""
    given = environ.get("CUDA_VISIBLE_DEVICES")
    visible = [d for d in (given or "").split(",") if d.strip()]
    if given is None:
        device = str(local_rank)
    elif not visible:  # no GPU granted: vLLM says so itself
        device = ""
    elif local_rank < len(visible):
        device = visible[local_rank]
    elif len(visible) == 1:  # SLURM bound one GPU to this task
        device = visible[0]
    else:
        raise RuntimeError(f"local rank {local_rank} has no GPU of its own: CUDA_VISIBLE_DEVICES is {given}")
    # the job's torch.distributed world, which the child must not see (vLLM would join it, not start its own)
    child = {key: value for key, value in environ.items()
             if key not in DISTRIBUTED_VARIABLES and not key.startswith("TORCHELASTIC_")}
    path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), environ.get("PYTHONPATH")]))
    return child | {"CUDA_VISIBLE_DEVICES": device, "PYTHONPATH": path}


def sampling_options(settings: GenerationSettings) -> dict[str, Any]:
    """vllm.SamplingParams' keyword arguments for `settings` (greedy: one completion, see the module docstring)."""
    sampling = settings.temperature > 0
    options = {"n": settings.samples if sampling else 1, "temperature": settings.temperature,
               "top_p": settings.top_p if sampling else 1.0, "max_tokens": settings.max_new_tokens,
               "stop": [s for s in settings.stop if s] or None, "seed": settings.seed, "skip_special_tokens": True}
    if sampling and settings.top_k > 0:
        options["top_k"] = settings.top_k
    return options


def run_requests(payload: Mapping[str, Any]) -> list[list[list[str]]]:
    """In the child: one vLLM engine, every request through it, completions in prompt order (vLLM leaves the stop
    strings out of the text)."""
    from vllm import LLM, SamplingParams

    llm = LLM(**payload["llm"])
    lora = None
    if payload["adapter"] is not None:
        from vllm.lora.request import LoRARequest

        lora = LoRARequest(lora_name="adapter", lora_int_id=1, lora_path=payload["adapter"])
    results = []
    for request in payload["requests"]:
        settings = GenerationSettings(**{**request["settings"], "stop": tuple(request["settings"]["stop"])})
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in request["prompt_token_ids"]],
                               SamplingParams(**sampling_options(settings)), lora_request=lora, use_tqdm=True)
        texts = [[completion.text for completion in output.outputs] for output in outputs]
        if settings.temperature == 0:
            texts = [greedy * settings.samples for greedy in texts]
        results.append(texts)
    return results


def main(argv: Sequence[str]) -> int:
    request, result = map(Path, argv)
    completions = run_requests(json.loads(request.read_text()))
    result.write_text(json.dumps({"completions": completions}))
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the result is written: never wait on the engine's own shutdown, which can hang
