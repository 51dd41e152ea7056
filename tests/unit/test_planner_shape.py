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


def saved_activation_bytes(model: torch.nn.Module, batch: int, length: int) -> int:
    """Bytes autograd keeps for the backward of one training forward (weights excluded), counted per storage."""
    storages: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    ids = torch.randint(0, 100, (batch, length))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model.train()(ids, labels=ids)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(size for pointer, size in storages.items() if pointer not in weights)


@pytest.mark.parametrize(("model_dir", "checkpointing"), [("tiny-starcoder", False), ("tiny-llama", False),
                                                          ("tiny-starcoder", True)])
def test_activations_are_what_autograd_keeps(model_dir: str, checkpointing: bool) -> None:
    """On CPU (SDPA's math kernel, fp32 dropout masks), micro batch 2 × 256 tokens."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from launchers.planner.memory import saved_activations
    from launchers.planner.setup import Setup
    from launchers.recipe.load import resolve
    from launchers.recipe.plan import make_plan

    overrides = ["data.seq_length=256", "training.per_device_batch_size=2",
                 f"training.gradient_checkpointing={str(checkpointing).lower()}"]
    resolved = resolve("full-ft", model_dir, overrides)
    config_path = Path(resolved.recipe.model.config or "")
    setup = Setup.of(resolved.recipe, make_plan(resolved), model_shape(json.loads(config_path.read_text())), None)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_path), attn_implementation="sdpa")
    if checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    torch.manual_seed(0)
    assert saved_activations(setup) == pytest.approx(saved_activation_bytes(model, 2, 256), rel=0.1)
