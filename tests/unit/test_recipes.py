"""Every shipped recipe (recipes/<model>/<method>.yaml) resolves, passes the file checks and plans; its LoRA targets
name real modules of the architecture; `launch recipes` lists it and `launch show` prints it faithfully.

This is the one unit-test file that imports torch/transformers (jobs.common.architecture builds each model on the meta
device from the recipe's config.json: no weights, ~5 s for the imports).

    .venv/bin/python -m pytest tests/unit/test_recipes.py -q
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from launchers.recipe.checks import check_files
from launchers.recipe.load import CATALOG_ENV, list_methods, list_models, resolve
from launchers.recipe.plan import make_plan
from tests.unit.launch_harness import CliResult

Launch = Callable[..., CliResult]

# The seed's known mistake: StarCoder (GPTBigCode) has no q_attn without cross-attention; `launch` warns and
# trains the other targets. Nothing else may be unmatched.
KNOWN_UNMATCHED = {
    "starcoder15b/qlora": ["q_attn"],
    "starcoder15b/qlora-1gpu": ["q_attn"],
    "starcoderbase-1b/lora-fim": ["q_attn"],
    "starcoderplus/chat-assistant": ["q_attn"],
}


def shipped_recipes() -> list[tuple[str, str]]:
    """(method, model) of every recipe in the shipped catalog, with $CLUSTERFT_RECIPES ignored."""
    saved = os.environ.pop(CATALOG_ENV, None)
    try:
        return [(method, model) for model in list_models() for method in list_methods(model)]
    finally:
        if saved is not None:
            os.environ[CATALOG_ENV] = saved


RECIPES = shipped_recipes()
RECIPE_IDS = [f"{model}/{method}" for method, model in RECIPES]


def test_catalog_is_not_empty() -> None:
    assert len(RECIPES) >= 15
    assert ("full-ft", "starcoder15b") in RECIPES
    assert ("lora", "tiny-starcoder") in RECIPES


@pytest.mark.parametrize(("method", "model"), RECIPES, ids=RECIPE_IDS)
def test_recipe_resolves_checks_and_plans(method: str, model: str) -> None:
    resolved = resolve(method, model)
    recipe = resolved.recipe
    assert recipe.name == f"{model}/{method}"
    check_files(resolved)
    plan = make_plan(resolved)
    assert plan.world_size == recipe.resources.nodes * recipe.resources.ranks_per_node
    assert plan.global_batch_size == recipe.training.per_device_batch_size * plan.gradient_accumulation_steps \
        * plan.world_size
    assert (plan.accelerate_config is None) == (recipe.distributed.backend == "single")


@pytest.mark.parametrize(("method", "model"), RECIPES, ids=RECIPE_IDS)
def test_lora_targets_match_the_architecture(method: str, model: str) -> None:
    recipe = resolve(method, model).recipe
    if recipe.method.lora is None:
        pytest.skip("no LoRA in this recipe")
    assert recipe.model.config is not None, "a LoRA recipe needs model.config for the offline target check"
    from jobs.common.architecture import lora_target_report

    report = lora_target_report(recipe.model.config, recipe.method.lora.target_modules)
    assert report.linear_names, f"{report.architecture} has no Linear/Conv1D modules?"
    assert report.matched, f"no target of {recipe.method.lora.target_modules} matches {report.linear_names}"
    assert report.unmatched == KNOWN_UNMATCHED.get(recipe.name, []), (
        f"{recipe.name}: unmatched {report.unmatched}; linear modules: {report.linear_names}"
    )


def test_known_unmatched_are_starcoder_recipes() -> None:
    assert set(KNOWN_UNMATCHED) <= set(RECIPE_IDS)
    assert all(name.startswith("starcoder") for name in KNOWN_UNMATCHED)


def test_recipes_command_lists_every_recipe(launch: Launch) -> None:
    result = launch("recipes")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["RECIPE", "METHOD", "BACKEND", "GPUS", "SEQ", "LENGTH", "LR", "RUN", "IT", "WITH"]
    listed = [line.split()[0] for line in lines[1:]]
    assert listed == RECIPE_IDS
    for line, (method, model) in zip(lines[1:], RECIPES):  # the command that runs it, and one format for rates
        assert line.endswith(f"launch {method} {model}") and re.search(r" \d(\.\d+)?e-\d\d ", line), line


def test_swapped_method_and_model_suggest_the_order(launch: Launch) -> None:
    result = launch("starcoder15b", "qlora", "--dry-run")
    assert result.code == 2 and result.err_lines == [
        "launch: error: unknown model 'qlora': the method comes first: launch qlora starcoder15b"]


def test_version(launch: Launch) -> None:
    result = launch("--version")
    assert result.code == 0 and re.fullmatch(r"launch \(clusterft\) \S+\n", result.out)


def test_one_bad_file_in_a_user_catalog_does_not_hide_the_others(launch: Launch, user_catalog: Path) -> None:
    (user_catalog / "lora.yaml").write_text("training: [unclosed\n")
    result = launch("recipes")
    assert result.code == 0
    listed = [line.split()[0] for line in result.out.splitlines()[1:]]
    assert "tiny-starcoder/lora" not in listed and "tiny-starcoder/full-ft" in listed and "starcoder15b/qlora" in listed
    assert result.err_lines == [line for line in result.err_lines if line.startswith("warning: tiny-starcoder/lora")]
    assert len(result.err_lines) == 1 and "lora.yaml" in result.err


@pytest.mark.parametrize(("method", "model"), RECIPES, ids=RECIPE_IDS)
def test_show_reparses_to_the_recipe(launch: Launch, method: str, model: str) -> None:
    result = launch("show", method, model)
    assert result.code == 0, result.err
    expected = resolve(method, model).recipe.model_dump(mode="json")
    assert yaml.safe_load(result.out) == expected
