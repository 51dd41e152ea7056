"""jobs.export.mix against PEFT's own add_weighted_adapter: the mixed adapter, attached to the base, must give the logits
PEFT's mixed adapter gives (linear, svd, cat), on tiny Llama and GPT-2 (fan_in_fan_out) models.

    .venv/bin/python -m pytest tests/unit/test_mix.py -q
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from jobs.export.mix import mix_adapters
from tests.unit.test_merge import FP32_ATOL, gpt2_config, llama_config, logits, save_adapter, save_base

peft = pytest.importorskip("peft")
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

CASES = {
    "llama": (llama_config, {"target_modules": ["q_proj", "v_proj"]}, {"target_modules": ["q_proj", "k_proj"]}),
    "gpt2": (gpt2_config, {"target_modules": ["c_attn"], "fan_in_fan_out": True},
             {"target_modules": ["c_attn", "c_proj"], "fan_in_fan_out": True}),
}


def peft_mix_logits(base: Path, adapters: list[Path], weights: list[float], combine: str) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapters[0], adapter_name="a0")
        for index, path in enumerate(adapters[1:], 1):
            model.load_adapter(path, adapter_name=f"a{index}")
        model.add_weighted_adapter([f"a{i}" for i in range(len(adapters))], weights, "mix", combination_type=combine)
    model.set_adapter("mix")
    return logits(model)


def attached_logits(base: Path, adapter: Path) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter))


@pytest.fixture(params=sorted(CASES))
def two_adapters(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, list[Path]]:
    config, first, second = CASES[request.param]
    base = save_base(config(), tmp_path / "base")
    return base, [save_adapter(base, tmp_path / "a0", seed=1, **first),
                  save_adapter(base, tmp_path / "a1", seed=2, r=4, lora_alpha=16, **second)]


@pytest.mark.parametrize("combine", ["linear", "svd", "cat"])
def test_mix_equals_peft_add_weighted_adapter(tmp_path: Path, two_adapters: tuple[Path, list[Path]],
                                              combine: str) -> None:
    base, adapters = two_adapters
    weights = [0.7, -0.4] if combine != "svd" else [0.5, 0.5]
    mixed = mix_adapters(list(zip(adapters, weights, strict=True)), combine, tmp_path / "mixed")
    expected = peft_mix_logits(base, adapters, weights, combine)
    torch.testing.assert_close(attached_logits(base, mixed), expected, atol=FP32_ATOL, rtol=0)
    config: dict[str, Any] = json.loads((mixed / "adapter_config.json").read_text())
    assert config["r"] == (8 if combine == "cat" else 4) and config["lora_alpha"] == config["r"]


def test_one_adapter_down_weighted_is_the_adapter_at_that_weight(tmp_path: Path,
                                                                 two_adapters: tuple[Path, list[Path]]) -> None:
    from tests.unit.test_merge import peft_logits

    base, adapters = two_adapters
    mixed = mix_adapters([(adapters[0], 0.8)], "cat", tmp_path / "mixed")
    torch.testing.assert_close(attached_logits(base, mixed), peft_logits(base, adapters[0], scale=0.8),
                               atol=FP32_ATOL, rtol=0)


def test_refusals(tmp_path: Path) -> None:
    base = save_base(llama_config(), tmp_path / "base")
    r4 = save_adapter(base, tmp_path / "r4", target_modules=["q_proj"])
    r8 = save_adapter(base, tmp_path / "r8", r=8, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="combine linear needs adapters of equal rank.*r=4.*r=8.*use cat or svd"):
        mix_adapters([(r4, 0.5), (r8, 0.5)], "linear", tmp_path / "out")
    with pytest.raises(ValueError, match="combine ties needs a density"):
        mix_adapters([(r4, 0.5), (r4, 0.5)], "ties", tmp_path / "out")
    wide = save_base(llama_config().__class__(**{**llama_config().to_dict(), "hidden_size": 64,
                                                 "intermediate_size": 64}), tmp_path / "wide")
    other = save_adapter(wide, tmp_path / "other", target_modules=["q_proj"])
    with pytest.raises(ValueError, match="adapters disagree on model.layers.0.self_attn.q_proj.weight"):
        mix_adapters([(r4, 0.5), (other, 0.5)], "cat", tmp_path / "out")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="exists: refusing to overwrite"):
        mix_adapters([(r4, 1.0)], "cat", tmp_path / "taken")
    assert not (tmp_path / "out").exists()
