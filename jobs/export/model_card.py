"""The model card (README.md) written into every exported model or adapter directory.

    from jobs.export.model_card import model_card
    text = model_card(recipe, kind="merged model", source="final/", launch_argv=[...], metrics={...})

A Hugging Face style card: YAML front matter (library, base model, tags) and what a reader needs to trust and
reproduce the weights: the recipe, the data, the training numbers, the last metrics and the command that made them.
Nothing in it is a secret: the recipe and command line were redacted when the run was launched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from jobs.spec.schema import Recipe

CARD_METRICS = ("eval/loss", "train/loss", "train/tokens_per_s")


def model_card(recipe: Recipe, *, kind: str, source: str, launch_argv: Sequence[str], metrics: Mapping[str, Any],
               step: int | None, export_command: str = "", adapter_weight: float = 1.0) -> str:
    base = recipe.model.name_or_path if recipe.model.init == "pretrained" else f"random init ({recipe.model.config})"
    front = {
        "library_name": "peft" if kind == "adapter" else "transformers",
        "base_model": recipe.model.name_or_path if recipe.model.init == "pretrained" else None,
        "tags": ["clusterft", recipe.method.kind, "code"],
        "pipeline_tag": "text-generation",
    }
    method = recipe.method.kind
    if recipe.method.lora is not None:
        lora = recipe.method.lora
        method += f" (r={lora.r}, alpha={lora.alpha}, targets {', '.join(lora.target_modules)})"
    if recipe.method.quantization is not None:
        method += f", base quantized to 4-bit {recipe.method.quantization.quant_type} while training"
    training = recipe.training
    length = f"{training.max_steps} steps" if training.max_steps else f"{training.epochs:g} epochs"
    lines = [
        "---", yaml.safe_dump({k: v for k, v in front.items() if v is not None}, sort_keys=False).strip(), "---", "",
        f"# {recipe.name}: {kind}", "",
        f"Fine-tuned with clusterft from `{source}` of the run.", "",
        "| | |", "|---|---|",
        f"| base model | {base}{f' @ {recipe.model.revision}' if recipe.model.init == 'pretrained' else ''} |",
        f"| method | {method} |",
        (f"| data | {recipe.data.source} ({recipe.data.format}, sequences of {recipe.data.seq_length} tokens"
         f"{', packed' if recipe.data.packing else ''}) |"),
        (f"| training | {length}, learning rate {training.learning_rate:g} ({training.lr_scheduler}), "
         f"per-device batch {training.per_device_batch_size}, seed {training.seed} |"),
        f"| distributed | {recipe.distributed.backend} |",
    ]
    if recipe.export.adapters:
        mixed = ", ".join(f"{name} × {weight:g}" for name, weight in recipe.export.adapters.items())
        lines.append(f"| adapters | {mixed}, combined by {recipe.export.combine} |")
    if kind == "merged model":
        into = f"the weights of {recipe.export.base} (transferred)" if recipe.export.base else "the 16-bit base weights"
        lines.append(f"| merge | W + {adapter_weight:g} · (alpha/r) · B·A into {into} |")
    shown = {name: metrics[name] for name in CARD_METRICS if name in metrics}
    if shown:
        lines += ["", f"## Metrics{f' (step {step})' if step is not None else ''}", "", "| metric | value |",
                  "|---|---|", *(f"| {name} | {value:.4g} |" for name, value in shown.items())]
    lines += ["", "## Reproduce", "", "```", " ".join(launch_argv)]
    if export_command:
        lines.append(export_command)
    lines += ["```", "", "The resolved recipe:", "", "```yaml", recipe.to_yaml().rstrip(), "```", ""]
    return "\n".join(lines)

