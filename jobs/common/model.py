"""Base model and PEFT config for a recipe: full, LoRA or QLoRA (bitsandbytes nf4); its tokenizer is
jobs.common.tokenizer (the prepare stage needs only that, without the modeling code).

A random-init model (tiny recipes) is first materialized by rank 0 into <run>/base/ — seeded, written atomically —
so every rank, and later the export and eval stages, load it exactly like a hub checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel

from jobs.common.build_once import build_once
from jobs.common.hub import model_directory
from jobs.spec.context import RankContext
from jobs.spec.rundir import COMPLETE_MARKER, RunDir
from jobs.spec.schema import Recipe

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "uint8": torch.uint8}
WAIT_FOR_BASE_S = 600


def attention_implementation(requested: str) -> str:
    if requested != "auto":
        return requested
    if importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available():
        return "flash_attention_2"
    return "sdpa"


def base_model_path(recipe: Recipe, context: RankContext, tokenizer: Any) -> str:
    """Where from_pretrained reads the base: the local directory or the hub snapshot the prepare stage fetched, or
    <run>/base for a random init."""
    if recipe.model.init == "pretrained":
        return str(model_directory(recipe.model.name_or_path, recipe.model.revision))
    base = RunDir(context.run_dir).base
    build_once(base, context, lambda: _materialize_random_base(recipe, tokenizer, base), WAIT_FOR_BASE_S,
               "the random-init base")
    return str(base)


def _materialize_random_base(recipe: Recipe, tokenizer: Any, base: Path) -> None:
    assert recipe.model.config is not None  # the schema requires it for init: random
    config = AutoConfig.from_pretrained(recipe.model.config)
    torch.manual_seed(recipe.training.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[recipe.model.dtype])
    tmp = base.with_name(f".{base.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / COMPLETE_MARKER).write_text("random init from " + recipe.model.config + "\n")
    os.replace(tmp, base)


def quantization_config(recipe: Recipe) -> BitsAndBytesConfig | None:
    quant = recipe.method.quantization
    if quant is None:
        return None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=DTYPES[quant.compute_dtype],
        bnb_4bit_quant_storage=DTYPES[quant.storage_dtype],
    )


def load_model(recipe: Recipe, path: str, context: RankContext) -> PreTrainedModel:
    kwargs: dict[str, Any] = {
        "dtype": DTYPES[recipe.model.dtype],
        "attn_implementation": attention_implementation(recipe.model.attn_implementation),
        "trust_remote_code": recipe.model.trust_remote_code,
    }
    quant = quantization_config(recipe)
    if quant is not None:
        kwargs["quantization_config"] = quant
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": context.local_rank}
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def peft_config(recipe: Recipe) -> Any:
    lora = recipe.method.lora
    if lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias=lora.bias,
        use_rslora=lora.use_rslora,
        task_type="CAUSAL_LM",
    )
