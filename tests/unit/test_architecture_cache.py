"""The launcher's LoRA target check, cached per config.json (jobs.common.architecture): built once on the meta
device, then read back; a damaged entry is rebuilt; a refused recipe writes nothing.

    .venv/bin/python -m pytest tests/unit/test_architecture_cache.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

from jobs.common.architecture import lora_target_report

CONFIG = str(Path(__file__).resolve().parents[2] / "recipes" / "tiny-starcoder" / "config.json")


def test_the_architecture_is_built_once_then_read_from_the_cache(tmp_path: Path) -> None:
    built = lora_target_report(CONFIG, ["c_attn", "q_attn"], tmp_path)
    (entry,) = tmp_path.glob("*.json")
    assert built.matched == ["c_attn"] and built.unmatched == ["q_attn"]
    assert json.loads(entry.read_text())["architecture"] == built.architecture == "GPTBigCodeForCausalLM"
    entry.write_text(json.dumps({"architecture": "Marked", "linear": ["h.0.attn.c_attn"]}))
    assert lora_target_report(CONFIG, ["c_attn"], tmp_path).architecture == "Marked"  # read, not rebuilt
    entry.write_text('{"architecture": ')
    assert lora_target_report(CONFIG, ["c_attn"], tmp_path).linear_names == built.linear_names
    assert json.loads(entry.read_text())["architecture"] == "GPTBigCodeForCausalLM"  # damaged: rebuilt


def test_a_recipe_whose_targets_match_nothing_writes_nothing(tmp_path: Path) -> None:
    assert lora_target_report(CONFIG, ["q_proj"], tmp_path / "cache").matched == []
    assert not (tmp_path / "cache").exists()
