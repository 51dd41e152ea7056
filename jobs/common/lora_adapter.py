"""A PEFT LoRA adapter directory read for merging or mixing: its config checked, its A/B factors and scalings.

    from jobs.common.lora_adapter import load_adapter
    adapter = load_adapter(Path("run/final"), weight=0.8)   # Adapter: .config, .loras, .replacements
    .venv/bin/python -m pytest tests/unit/test_merge.py tests/unit/test_mix.py -q

`load_adapter` reads `adapter_config.json` + `adapter_model.safetensors` and returns, per base tensor a LoRA module
targets (`<module>.weight`), a `Lora` with its factors in float32 (float64 if either is) and its scale
weight · lora_alpha / r (lora_alpha / √r with use_rslora; rank_pattern/alpha_pattern honoured), transposed for
fan_in_fan_out (GPT-2's Conv1D) and embeddings; tensors the adapter saves whole (trained biases, modules_to_save,
embedding layers) are `replacements`, keyed by the base tensor's name. Refused with one line (ValueError): other
adapter types and LoRA variants (DoRA, lora_bias, aLoRA, ...), initialisations that rewrite the base weights (PiSSA,
OLoRA, CorDA, LoftQ, LoRA-GA), pickled weights, unpaired or conv factors, a rank that disagrees with the config,
and NaN or infinite weights. Used by `jobs.export.merge` and `jobs.export.mix`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from jobs.common.hf_files import ADAPTER_CONFIG, ADAPTER_WEIGHTS

PEFT_PREFIX = "base_model.model."

# Adapter-config fields that make an adapter something other than plain LoRA (PEFT marks most of them as LoRA
# variants with their own merge), or that change which weights exist.
REFUSED_FIELDS = {
    "use_dora": "DoRA (use_dora) rescales each merged weight by a learned magnitude",
    "lora_bias": "lora_bias adds a bias to lora_B",
    "use_qalora": "QALoRA pools its inputs",
    "use_bdlora": "BD-LoRA uses block-diagonal factors",
    "velora_config": "VeLoRA is a LoRA variant",
    "kasa_config": "KaSA truncates the base weights' singular values",
    "monteclora_config": "MonteCLoRA samples its factors",
    "arrow_config": "Arrow routes between adapters per token",
    "alora_invocation_tokens": "an activated LoRA (aLoRA) applies only after its invocation tokens",
    "target_parameters": "target_parameters adapts nn.Parameters (fused MoE experts)",
    "layer_replication": "layer_replication builds a different stack of layers",
    "trainable_token_indices": "trainable_token_indices trains single embedding rows",
    "megatron_config": "Megatron-parallel LoRA layers",
}
# init_lora_weights values that rewrite the base weights (or are variants): the adapter needs the modified base.
REFUSED_INITS = ("pissa", "corda", "olora", "loftq", "lora_ga", "mica")


@dataclass
class Lora:
    """One LoRA module: W[out, in] += scale · B @ A, or W[in, out] += scale · (B @ A)ᵀ when transposed."""

    module: str
    kind: str  # "linear" or "embedding"
    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    scale: float = 0.0
    transposed: bool = False


@dataclass
class Adapter:
    config: dict[str, Any]
    loras: dict[str, Lora] = field(default_factory=dict)  # base tensor name → module
    replacements: dict[str, torch.Tensor] = field(default_factory=dict)  # base tensor name → saved tensor


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's get_pattern_key: the first pattern that matches the end of the module path (regex allowed)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _check_adapter_config(config: dict[str, Any], adapter_dir: Path) -> None:
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise ValueError(f"adapter {adapter_dir} is {config.get('peft_type')!r}, not LORA: only LoRA/QLoRA adapters "
                         "merge here")
    for name, why in REFUSED_FIELDS.items():
        if config.get(name):
            raise ValueError(f"adapter {adapter_dir} sets {name}: {why}; only plain LoRA merges here")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(REFUSED_INITS):
        raise ValueError(f"adapter {adapter_dir} was initialised with init_lora_weights={init!r}, which rewrites the "
                         "base weights: convert it to plain LoRA first (PEFT's save_pretrained(..., "
                         "path_initial_model_for_weight_conversion=...))")
    if config.get("bias", "none") not in ("none", "all", "lora_only"):
        raise ValueError(f"adapter {adapter_dir}: bias={config.get('bias')!r} is not one of none, all, lora_only")
    if not config.get("r") or not config.get("lora_alpha"):
        raise ValueError(f"adapter {adapter_dir}: adapter_config.json lacks r or lora_alpha")


def load_adapter(adapter_dir: Path, weight: float) -> Adapter:
    from safetensors.torch import load_file

    config_path = adapter_dir / ADAPTER_CONFIG
    if not config_path.is_file():
        raise ValueError(f"adapter {adapter_dir}: no {ADAPTER_CONFIG} (not a PEFT adapter directory)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    _check_adapter_config(config, adapter_dir)
    weights_path = adapter_dir / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        other = " (adapter_model.bin is pickle: save with safe_serialization)" if (
            adapter_dir / "adapter_model.bin").exists() else ""
        raise ValueError(f"adapter {adapter_dir}: no {ADAPTER_WEIGHTS}{other}")

    adapter = Adapter(config)
    by_module: dict[str, Lora] = {}
    for key, tensor in load_file(str(weights_path)).items():
        if not key.startswith(PEFT_PREFIX):
            raise ValueError(f"adapter {adapter_dir}: key {key} does not start with {PEFT_PREFIX!r} (not saved by "
                             "PEFT from a causal LM?)")
        rest = key[len(PEFT_PREFIX):]
        if match := re.fullmatch(r"(.+)\.lora_([AB])\.weight", rest):
            module, side, kind = match.group(1), match.group(2), "linear"
        elif match := re.fullmatch(r"(.+)\.lora_embedding_([AB])", rest):
            module, side, kind = match.group(1), match.group(2), "embedding"
        elif "lora_" in rest:
            raise ValueError(f"adapter {adapter_dir}: tensor {key} is not a LoRA A/B weight this merge understands")
        else:  # saved whole: trained biases, modules_to_save, embedding layers ("<module>.base_layer.weight")
            if ".original_module." in rest:  # the frozen original of a modules_to_save (bias="all" saves it too)
                continue
            target = rest.replace(".base_layer.", ".").replace(".modules_to_save.", ".")
            if target in adapter.replacements and not torch.equal(adapter.replacements[target], tensor):
                raise ValueError(f"adapter {adapter_dir}: two different tensors saved for {target}")
            adapter.replacements[target] = tensor
            continue
        lora = by_module.setdefault(module, Lora(module, kind))
        if lora.kind != kind:
            raise ValueError(f"adapter {adapter_dir}: module {module} has both linear and embedding LoRA weights")
        if side == "A":
            lora.a = tensor
        else:
            lora.b = tensor

    rslora = bool(config.get("use_rslora"))
    fan_in_fan_out = bool(config.get("fan_in_fan_out"))
    for module, lora in by_module.items():
        if lora.a is None or lora.b is None:
            raise ValueError(f"adapter {adapter_dir}: module {module} has lora_{'B' if lora.a is None else 'A'} "
                             "but not its partner")
        if lora.a.ndim != 2 or lora.b.ndim != 2:
            raise ValueError(f"adapter {adapter_dir}: module {module} has {lora.a.ndim}-d LoRA weights (a conv "
                             "layer?): only linear and embedding layers merge here")
        r = int(_pattern_value(config.get("rank_pattern") or {}, module, config["r"]))
        alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"]))
        if lora.a.shape[0] != r or lora.b.shape[1] != r:
            raise ValueError(f"adapter {adapter_dir}: module {module} has rank {lora.a.shape[0]}, "
                             f"adapter_config.json says r={r} (rank_pattern)")
        lora.scale = weight * (alpha / math.sqrt(r) if rslora else alpha / r)
        lora.transposed = lora.kind == "embedding" or fan_in_fan_out
        compute = torch.float64 if torch.float64 in (lora.a.dtype, lora.b.dtype) else torch.float32
        lora.a, lora.b = lora.a.to(compute), lora.b.to(compute)
        adapter.loras[f"{module}.weight"] = lora
    if not adapter.loras:
        raise ValueError(f"adapter {adapter_dir}: {ADAPTER_WEIGHTS} holds no LoRA weights")
    # PEFT's safe merge looks for NaN/inf in every merged weight; a finite adapter cannot produce them from a finite
    # base (bf16/fp32 overflow would need |ΔW| ~ 1e38), so checking the adapter once costs nothing per block.
    for lora in adapter.loras.values():  # a NaN or inf anywhere makes the (float64) sum non-finite
        if not math.isfinite(lora.a.double().sum().item() + lora.b.double().sum().item()):
            raise ValueError(f"adapter {adapter_dir}: module {lora.module} has NaN or infinite LoRA weights (a broken "
                             "adapter)")
    for name, tensor in adapter.replacements.items():
        if tensor.is_floating_point() and not math.isfinite(tensor.double().sum().item()):
            raise ValueError(f"adapter {adapter_dir}: {name} has NaN or infinite values (a broken adapter)")
    return adapter
