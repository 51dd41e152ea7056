"""Which model of a run to load, for the eval stage and `launch generate`.

    from jobs.run_models import load_run_model
    model, described = load_run_model(run, recipe, "merged", context)            # or "adapter", "base"
    model, described = load_run_model(run, recipe, "adapter", context, adapter_weight=0.8)

    merged   the newest export's model/ (full fine-tunes without an export: final/; LoRA without one: as adapter)
    adapter  the base with final/ attached through PEFT (QLoRA: on the 4-bit base it trained on), its LoRA scaled
             by `adapter_weight` (the seed down-weighted to 0.8)
    base     the model before training: <run>/base (random init), the local directory or hub snapshot

The model is in eval mode, on this rank's GPU when there is one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from jobs.context import RankContext
from launchers.recipe.schema import Recipe
from launchers.rundir import RunDir

MODELS = ("merged", "adapter", "base")


def load_run_model(run: RunDir, recipe: Recipe, which: str, context: RankContext,
                   adapter_weight: float = 1.0) -> tuple[Any, str]:
    """The model `which` names and a description of what it is."""
    from jobs.export import base_weights, versions
    from jobs.model import load_model

    if which == "merged":
        merged = [v / "model" for v in versions(run) if (v / "model").is_dir()]
        if merged:
            return _ready(_load_plain(recipe, merged[-1]), context), f"merged model {merged[-1]}"
        if recipe.method.lora is None:
            return _ready(_load_plain(recipe, run.final), context), f"final model {run.final}"
        print("[model] no exported model yet: the base with the adapter attached", file=sys.stderr, flush=True)
        which = "adapter"
    base = base_weights(run, recipe)
    if which == "base":
        return _ready(_load_plain(recipe, base), context), f"base model {base}"
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    model = PeftModel.from_pretrained(load_model(recipe, str(base), context), str(run.final))
    if adapter_weight != 1.0:
        for module in model.modules():
            if isinstance(module, LoraLayer):
                module.scaling = {name: value * adapter_weight for name, value in module.scaling.items()}
    weight = f" at weight {adapter_weight:g}" if adapter_weight != 1.0 else ""
    return _ready(model, context), f"base {base} + adapter {run.final}{weight}"


def _load_plain(recipe: Recipe, path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    from jobs.model import DTYPES, attention_implementation

    implementation = attention_implementation(recipe.model.attn_implementation)
    return AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[recipe.model.dtype],
                                                attn_implementation=implementation)


def _ready(model: Any, context: RankContext) -> Any:
    import torch

    if torch.cuda.is_available() and not getattr(model, "is_loaded_in_4bit", False):
        model = model.to(f"cuda:{context.local_rank}")
    return model.eval()
