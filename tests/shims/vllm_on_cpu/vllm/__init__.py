"""Test-only stand-in for vLLM, which needs a GPU: the slice of its offline API that jobs/eval/vllm_engine.py uses.

With tests/shims/vllm_on_cpu on PYTHONPATH, `import vllm` finds this package: `LLM`, `SamplingParams` and (in
vllm.lora.request) `LoRARequest`, with vLLM's keyword names and the rules of theirs the engine must respect —
keyword-only options, n = 1 under greedy decoding, no empty stop string, LoRA ranks from vLLM's fixed list, an
adapter only with enable_lora, prompts as {"prompt_token_ids": [...]}, stop strings left out of the text, outputs
in prompt order. Generation itself is transformers' on CPU, so completions can be compared with the transformers
engine's. Every engine start appends what it was given and its environment to $FAKE_VLLM_RECORD (JSON lines).
Nothing in clusterft imports it; on GPU nodes the real vLLM is installed instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")


class SamplingParams:
    def __init__(self, *, n: int = 1, temperature: float = 1.0, top_p: float = 1.0, max_tokens: int | None = 16,
                 stop: str | list[str] | None = None, seed: int | None = None, skip_special_tokens: bool = True,
                 include_stop_str_in_output: bool = False) -> None:
        if temperature < 1e-5 and n > 1:
            raise ValueError(f"n must be 1 when using greedy sampling, got {n}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.stop = [stop] if isinstance(stop, str) else list(stop or [])
        if any(s == "" for s in self.stop):
            raise ValueError("stop cannot contain an empty string")
        self.n, self.temperature, self.top_p, self.max_tokens, self.seed = n, temperature, top_p, max_tokens, seed
        self.skip_special_tokens, self.include_stop_str_in_output = skip_special_tokens, include_stop_str_in_output


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


class LLM:
    def __init__(self, model: str, *, tokenizer: str | None = None, tokenizer_revision: str | None = None,
                 dtype: str = "auto", seed: int | None = None, trust_remote_code: bool = False,
                 gpu_memory_utilization: float = 0.9, quantization: str | None = None, enable_lora: bool = False,
                 max_loras: int = 1, max_lora_rank: int = 16) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype}")
        if max_lora_rank not in LORA_RANKS:
            raise ValueError(f"max_lora_rank {max_lora_rank} is not one of {LORA_RANKS}")
        if quantization not in (None, "bitsandbytes"):
            raise ValueError(f"quantization {quantization} is not served by this stand-in")
        _record({"model": model, "tokenizer": tokenizer, "dtype": dtype, "seed": seed, "quantization": quantization,
                 "enable_lora": enable_lora, "max_lora_rank": max_lora_rank,
                 "gpu_memory_utilization": gpu_memory_utilization,
                 "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                 "distributed": sorted(k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
                                       if k in os.environ)})
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32) if quantization else None
        self.base = AutoModelForCausalLM.from_pretrained(model, quantization_config=quant).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model, revision=tokenizer_revision,
                                                       trust_remote_code=trust_remote_code)
        self.enable_lora, self.max_lora_rank, self.seed = enable_lora, max_lora_rank, seed
        self.adapters: dict[int, Any] = {}

    def generate(self, prompts: Sequence[dict[str, list[int]]], sampling_params: SamplingParams | None = None, *,
                 use_tqdm: bool = True, lora_request: Any = None) -> list[RequestOutput]:
        import torch

        params = sampling_params or SamplingParams()
        model = self._model(lora_request)
        results = []
        for index, prompt in enumerate(prompts):
            ids = torch.tensor([prompt["prompt_token_ids"]])
            sampling = params.temperature >= 1e-5
            if params.seed is not None:
                torch.manual_seed(params.seed)
            kwargs: dict[str, Any] = {"do_sample": sampling, "max_new_tokens": params.max_tokens,
                                      "num_return_sequences": params.n, "pad_token_id": self.tokenizer.eos_token_id}
            if sampling:
                kwargs |= {"temperature": params.temperature, "top_p": params.top_p}
            if params.stop:
                kwargs |= {"stop_strings": params.stop, "tokenizer": self.tokenizer}
            with torch.no_grad():
                output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
            completions = []
            for n, tokens in enumerate(output[:, ids.shape[1]:].tolist()):
                text = self.tokenizer.decode(tokens, skip_special_tokens=params.skip_special_tokens)
                cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=len(text))
                completions.append(CompletionOutput(n, text[:cut], tokens, "stop" if cut < len(text) else "length"))
            results.append(RequestOutput(str(index), prompt["prompt_token_ids"], completions))
        return results

    def _model(self, lora_request: Any) -> Any:
        if lora_request is None:
            return self.base
        if not self.enable_lora:
            raise ValueError("LoRA is not enabled: LLM(..., enable_lora=True)")
        if lora_request.lora_int_id not in self.adapters:
            from peft import PeftModel

            config = json.loads((Path(lora_request.lora_path) / "adapter_config.json").read_text())
            if config["r"] > self.max_lora_rank:
                raise ValueError(f"LoRA rank {config['r']} is greater than max_lora_rank {self.max_lora_rank}")
            self.adapters[lora_request.lora_int_id] = PeftModel.from_pretrained(self.base,
                                                                                lora_request.lora_path).eval()
        return self.adapters[lora_request.lora_int_id]


def _record(entry: dict[str, Any]) -> None:
    path = os.environ.get("FAKE_VLLM_RECORD")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
