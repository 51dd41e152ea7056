"""LoRA targets against the real architecture, built on the meta device from config.json (no weights).

    .venv/bin/python -m jobs.common.architecture recipes/starcoder15b/config.json c_proj c_attn q_attn c_fc
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class TargetReport:
    architecture: str
    matched: list[str]
    unmatched: list[str]
    linear_names: list[str]


def lora_target_report(config_path: str, targets: list[str] | str) -> TargetReport:
    """Which target names match a Linear/Conv1D module (as PEFT matches: the whole name or a dotted suffix)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linear = [name for name, module in model.named_modules()
              if name and type(module).__name__ in ("Linear", "Conv1D")]
    short_names = sorted({name.rsplit(".", 1)[-1] for name in linear})
    architecture = type(model).__name__
    if targets == "all-linear":
        return TargetReport(architecture, ["all-linear"], [], short_names)
    matched = [t for t in targets if any(name == t or name.endswith("." + t) for name in linear)]
    return TargetReport(architecture, matched, [t for t in targets if t not in matched], short_names)


if __name__ == "__main__":
    report = lora_target_report(sys.argv[1], sys.argv[2:])
    print(f"{report.architecture}: matched {report.matched}, unmatched {report.unmatched}; "
          f"linear modules: {report.linear_names}")
