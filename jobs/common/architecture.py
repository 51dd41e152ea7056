"""LoRA targets against the real architecture, built on the meta device from config.json (no weights).

    .venv/bin/python -m jobs.common.architecture recipes/starcoder15b/config.json c_proj c_attn q_attn c_fc

Building even a meta model imports torch and transformers' modeling code (seconds), so the launcher keeps what it
found per config.json and transformers version in a cache directory: the second submission of a recipe checks its
targets in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from jobs.spec.rundir import write_atomic


@dataclass(frozen=True)
class TargetReport:
    architecture: str
    matched: list[str]
    unmatched: list[str]
    linear_names: list[str]


def lora_target_report(config_path: str, targets: list[str] | str, cache: Path | None = None) -> TargetReport:
    """Which target names match a Linear/Conv1D module (as PEFT matches: the whole name or a dotted suffix). What
    was found goes to `cache` once some target matched (a refused recipe writes nothing)."""
    entry = cache / f"{_key(config_path)}.json" if cache is not None else None
    found = _read(entry) if entry is not None else None
    architecture, linear = found or linear_modules(config_path)
    short_names = sorted({name.rsplit(".", 1)[-1] for name in linear})
    if targets == "all-linear":
        report = TargetReport(architecture, ["all-linear"], [], short_names)
    else:
        matched = [t for t in targets if any(name == t or name.endswith("." + t) for name in linear)]
        report = TargetReport(architecture, matched, [t for t in targets if t not in matched], short_names)
    if entry is not None and found is None and report.matched:
        entry.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(entry, json.dumps({"architecture": architecture, "linear": linear}) + "\n")
    return report


def linear_modules(config_path: str) -> tuple[str, list[str]]:
    """The model class and the full names of its Linear/Conv1D modules, built on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linear = [name for name, module in model.named_modules()
              if name and type(module).__name__ in ("Linear", "Conv1D")]
    return type(model).__name__, linear


def _key(config_path: str) -> str:
    """The config's bytes and the transformers version that builds it (PackageNotFoundError, an ImportError, when
    transformers is not installed)."""
    return hashlib.sha256(Path(config_path).read_bytes() + version("transformers").encode()).hexdigest()[:24]


def _read(entry: Path) -> tuple[str, list[str]] | None:
    if not entry.exists():
        return None
    try:
        found = json.loads(entry.read_text(encoding="utf-8"))
        return str(found["architecture"]), [str(name) for name in found["linear"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # damaged: found again and rewritten


if __name__ == "__main__":
    report = lora_target_report(sys.argv[1], sys.argv[2:])
    print(f"{report.architecture}: matched {report.matched}, unmatched {report.unmatched}; "
          f"linear modules: {report.linear_names}")
