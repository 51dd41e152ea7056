"""The FSDP version is the recipe's, stated once: FSDP1 for QLoRA unless the recipe says otherwise, FSDP2 for the
other FSDP recipes; an accelerate config that states another version is an error naming both places. (That the
Trainer's plugin then runs it is checked at run time by the train job: tests/integration/test_fsdp.py.)

    .venv/bin/python -m pytest tests/unit/test_fsdp_version.py -q
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from launchers.recipe.load import RECIPES_ROOT, resolve
from launchers.recipe.plan import make_plan
from tests.unit.launch_harness import CliResult, assert_one_error_line


@pytest.mark.parametrize(("method", "model", "overrides", "version"), [
    ("qlora", "starcoder15b", [], 1),
    ("qlora", "starcoder15b", ["distributed.fsdp_version=2"], 2),
    ("lora", "tiny-llama", ["distributed.backend=fsdp", "resources.tasks_per_node=2"], 2),
    ("lora", "tiny-llama", ["distributed.backend=fsdp", "resources.tasks_per_node=2", "distributed.fsdp_version=1"], 1),
    ("full-ft", "starcoder15b", [], None),  # DeepSpeed ZeRO-3
])
def test_the_plan_carries_the_version(method: str, model: str, overrides: list[str], version: int | None) -> None:
    assert make_plan(resolve(method, model, overrides)).fsdp_version == version


def test_the_dry_run_says_which_fsdp(launch: Callable[..., CliResult]) -> None:
    result = launch("qlora", "starcoder15b", "--dry-run")
    assert result.code == 0 and "fsdp_qlora.yaml (FSDP1)" in result.out


def test_a_config_stating_another_version_is_one_line(launch: Callable[..., CliResult], tmp_path: Path) -> None:
    config = (RECIPES_ROOT / "accelerate" / "fsdp_qlora.yaml").read_text()
    mine = tmp_path / "mine.yaml"
    mine.write_text(config.replace("fsdp_use_orig_params: false", "fsdp_use_orig_params: false\n  fsdp_version: 2"))
    line = assert_one_error_line(launch("qlora", "starcoder15b", "--dry-run", f"distributed.accelerate_config={mine}"))
    assert "mine.yaml:" in line and "fsdp_config.fsdp_version: 2 disagrees with distributed.fsdp_version" in line
