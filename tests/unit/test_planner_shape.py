"""Parameter counts from config.json alone equal transformers' own, for every config the catalog ships (built on
the meta device: no weights), and LoRA's trainable count equals PEFT's on the tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from launchers.planner.shape import model_shape

CONFIGS = sorted(Path(__file__).resolve().parents[2].glob("recipes/*/config.json"))


def meta_model(config_path: Path) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_path))


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: p.parent.name)
def test_parameter_counts_equal_transformers(config_path: Path) -> None:
    model = meta_model(config_path)
    shape = model_shape(json.loads(config_path.read_text()))
    assert shape.parameters == model.num_parameters()
    own = [sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()]
    assert shape.largest_module == max(own)  # DeepSpeed's largest layer, counted as it counts it
    linears = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert shape.matmul_parameters == linears  # the output head is an nn.Linear, tied or not


@pytest.mark.parametrize(("model_dir", "targets"), [("tiny-starcoder", ["c_attn", "c_proj", "c_fc"]),
                                                    ("tiny-llama", ["q_proj", "v_proj"]),
                                                    ("tiny-llama", "all-linear")])
def test_lora_parameters_equal_peft(model_dir: str, targets: list[str] | str) -> None:
    from peft import LoraConfig, get_peft_model

    config_path = next(p for p in CONFIGS if p.parent.name == model_dir)
    from transformers import AutoConfig, AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_path)),
                           LoraConfig(r=8, target_modules=targets, task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert model_shape(json.loads(config_path.read_text())).lora_parameters(8, targets) == trainable
