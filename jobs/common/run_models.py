"""Where a run's models lie and loading them: for the eval stage, `launch generate`, `launch judge`, and the 16-bit
base the export stage merges into (`base_weights`; the launcher checks `launch export --base` with it: no torch at
import).

    from jobs.common.run_models import choose_run_model, load_chosen, load_run_model
    chosen = choose_run_model(run, recipe, "merged")          # where it lies: RunModel(path, adapter, quantized)
    model, described = load_chosen(chosen, recipe, context)   # ... loaded with transformers
    model, described = load_run_model(run, recipe, "merged", context)            # both at once; or "adapter", "base"
    model, described = load_run_model(run, recipe, "adapter", context, adapter_weight=0.8)

    merged   the newest export's model/ (full fine-tunes without an export: final/; LoRA without one: as adapter)
    adapter  the base with final/ attached through PEFT (QLoRA: on the 4-bit base it trained on), its LoRA scaled
             by `adapter_weight` (the seed down-weighted to 0.8)
    base     the model before training: <run>/base (random init), the local directory or hub snapshot

`choose_run_model` only decides (transformers loads the choice here, vLLM in its own process: jobs.eval.vllm_engine);
the loaded model is in eval mode, on this rank's GPU when there is one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.common.hub import model_directory
from jobs.spec.context import RankContext
from jobs.spec.errors import UserError
from jobs.spec.rundir import COMPLETE_MARKER, RunDir
from jobs.spec.schema import Recipe

MODELS = ("merged", "adapter", "base")


@dataclass(frozen=True)
class RunModel:
    path: Path                  # the weights (a model directory)
    adapter: Path | None        # a PEFT adapter to attach to them, or None
    quantized: bool             # load `path` in 4 bits (QLoRA's base, with its adapter)
    described: str


def choose_run_model(run: RunDir, recipe: Recipe, which: str) -> RunModel:
    """Where the model `which` names lies, and a description of what it is."""
    if which == "merged":
        merged = [v / "model" for v in run.versions() if (v / "model").is_dir()]
        if merged:
            return RunModel(merged[-1], None, False, f"merged model {merged[-1]}")
        if recipe.method.lora is None:
            return RunModel(run.final, None, False, f"final model {run.final}")
        print("[model] no exported model yet: the base with the adapter attached", file=sys.stderr, flush=True)
        which = "adapter"
    base = base_weights(run, recipe)
    if which == "base":
        return RunModel(base, None, False, f"base model {base}")
    return RunModel(base, run.final, recipe.method.quantization is not None, f"base {base} + adapter {run.final}")


def base_weights(run: RunDir, recipe: Recipe) -> Path:
    """The 16-bit base an adapter merges into: <run>/base (random init), a local directory, or the hub snapshot."""
    if recipe.model.init == "random":
        base = run.base
        if not (base / COMPLETE_MARKER).exists():
            raise UserError(f"run {run.name}: the random-init base {base} is missing (the train stage writes it)")
        return base
    return model_directory(recipe.model.name_or_path, recipe.model.revision)


def load_run_model(run: RunDir, recipe: Recipe, which: str, context: RankContext,
                   adapter_weight: float = 1.0) -> tuple[Any, str]:
    """The model `which` names, loaded with transformers (PEFT for an adapter), and a description of it."""
    return load_chosen(choose_run_model(run, recipe, which), recipe, context, adapter_weight)


def load_chosen(chosen: RunModel, recipe: Recipe, context: RankContext,
                adapter_weight: float = 1.0) -> tuple[Any, str]:
    """`chosen`, loaded with transformers (PEFT for an adapter), and a description of it."""
    if chosen.adapter is None:
        return _ready(_load_plain(recipe, chosen.path), context), chosen.described
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    from jobs.common.model import load_model

    model = PeftModel.from_pretrained(load_model(recipe, str(chosen.path), context), str(chosen.adapter))
    if adapter_weight != 1.0:
        for module in model.modules():
            if isinstance(module, LoraLayer):
                module.scaling = {name: value * adapter_weight for name, value in module.scaling.items()}
    weight = f" at weight {adapter_weight:g}" if adapter_weight != 1.0 else ""
    return _ready(model, context), chosen.described + weight


def _load_plain(recipe: Recipe, path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    from jobs.common.model import DTYPES, attention_implementation

    implementation = attention_implementation(recipe.model.attn_implementation)
    return AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[recipe.model.dtype],
                                                attn_implementation=implementation)


def _ready(model: Any, context: RankContext) -> Any:
    import torch

    if torch.cuda.is_available() and not getattr(model, "is_loaded_in_4bit", False):
        model = model.to(f"cuda:{context.local_rank}")
    return model.eval()
