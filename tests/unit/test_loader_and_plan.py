"""The recipe loader and the plan: YAML dialect, layering (model.yaml → method.yaml → overrides → flags), origins
(file:line), local-path resolution, SLURM time limits, derived numbers (world size, gradient accumulation,
precision, accelerate config) and credential-free tracking URIs.

    .venv/bin/python -m pytest tests/unit/test_loader_and_plan.py -q
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobs.spec.resources import slurm_minutes
from jobs.spec.rundir import public_uri
from launchers.recipe.load import RECIPES_ROOT, deep_merge, parse_override, read_yaml, resolve
from launchers.recipe.plan import ACCELERATE_DIR, make_plan
from tests.unit.launch_harness import CliResult, line_of

Launch = Callable[..., CliResult]
TINY = RECIPES_ROOT / "tiny-starcoder"


# --- YAML dialect ----------------------------------------------------------------------------------------------

DIALECT = [
    pytest.param("12:00:00", "12:00:00", id="hh-mm-ss-stays-a-string"),
    pytest.param("1:30", "1:30", id="mm-ss-stays-a-string"),
    pytest.param("1e-4", 1e-4, id="exponent-without-dot-is-float"),
    pytest.param("2.0e-4", 2e-4, id="exponent-with-dot-is-float"),
    pytest.param("0.05", 0.05, id="decimal-is-float"),
    pytest.param("90", 90, id="int"),
    pytest.param("-3", -3, id="negative-int"),
    pytest.param("1-12", "1-12", id="day-hours-stays-a-string"),
    pytest.param("4G", "4G", id="memory-stays-a-string"),
    pytest.param("true", True, id="bool"),
]


@pytest.mark.parametrize(("text", "value"), DIALECT)
def test_yaml_dialect_in_files(tmp_path: Path, text: str, value: Any) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"# comment\nsection:\n  key: {text}\n")
    data, origins = read_yaml(path)
    assert data["section"]["key"] == value
    assert type(data["section"]["key"]) is type(value)
    assert str(origins[("section", "key")]) == "recipe.yaml:3"


@pytest.mark.parametrize(("text", "value"), DIALECT)
def test_yaml_dialect_in_overrides(text: str, value: Any) -> None:
    nested, _ = parse_override(f"section.key={text}")
    assert nested == {"section": {"key": value}}
    assert type(nested["section"]["key"]) is type(value)


def test_override_values_parse_as_flow_yaml() -> None:
    assert parse_override("method.lora.target_modules=[c_attn, c_fc]")[0] == {
        "method": {"lora": {"target_modules": ["c_attn", "c_fc"]}}}
    assert parse_override("data.fields={prompt: question}")[0] == {"data": {"fields": {"prompt": "question"}}}
    assert parse_override("resources.partition=")[0] == {"resources": {"partition": ""}}
    assert parse_override("training.seed=[1")[0] == {"training": {"seed": "[1"}}  # not YAML: kept as text


def test_read_yaml_of_empty_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# only a comment\n")
    assert read_yaml(path) == ({}, {})


# --- layering: overrides nest and win --------------------------------------------------------------------------


def test_override_nests_and_remembers_every_prefix() -> None:
    nested, origins = parse_override("a.b.c=1")
    assert nested == {"a": {"b": {"c": 1}}}
    assert set(origins) == {("a",), ("a", "b"), ("a", "b", "c")}
    assert {str(origin) for origin in origins.values()} == {"override a.b.c=1"}


def test_deep_merge_merges_mappings_and_replaces_lists() -> None:
    base = {"lora": {"r": 8, "alpha": 16, "target_modules": ["c_attn", "c_fc"]}, "kind": "lora"}
    update = {"lora": {"r": 16, "target_modules": ["c_proj"]}}
    assert deep_merge(base, update) == {"lora": {"r": 16, "alpha": 16, "target_modules": ["c_proj"]}, "kind": "lora"}
    assert base["lora"]["r"] == 8  # inputs untouched


def test_overrides_win_over_recipe_files() -> None:
    resolved = resolve("lora", "tiny-starcoder", [
        "training.learning_rate=1e-4", "method.lora.r=16", "method.lora.target_modules=[c_attn]",
        "training.max_steps=5", "training.max_steps=7",
    ])
    recipe = resolved.recipe
    assert recipe.training.learning_rate == 1e-4
    assert recipe.method.lora is not None
    assert recipe.method.lora.r == 16
    assert recipe.method.lora.alpha == 16  # sibling from lora.yaml survives
    assert recipe.method.lora.target_modules == ["c_attn"]  # lists replace
    assert recipe.training.max_steps == 7  # the last override wins
    assert recipe.training.lr_scheduler == "cosine"  # untouched file value
    assert recipe.training.seed == 42  # schema default


def test_method_file_wins_over_model_yaml_and_override_over_both(user_catalog: Path) -> None:
    recipe_file = user_catalog / "lora.yaml"
    recipe_file.write_text(recipe_file.read_text() + "\nresources:\n  mem: 8G\n  cpus_per_task: 3\n")
    resolved = resolve("lora", "tiny-starcoder", ["resources.cpus_per_task=6"])
    assert resolved.recipe.resources.mem == "8G"  # model.yaml says 4G
    assert resolved.recipe.resources.cpus_per_task == 6
    assert resolved.recipe.resources.time == "00:20:00"  # only model.yaml sets it
    assert resolved.where("resources", "mem") == f"catalog/tiny-starcoder/lora.yaml:{line_of(recipe_file, 'mem: 8G')}"
    assert resolved.where("resources", "time") == (
        f"catalog/tiny-starcoder/model.yaml:{line_of(user_catalog / 'model.yaml', 'time:')}")
    assert resolved.where("resources", "cpus_per_task") == "override resources.cpus_per_task=6"


def test_show_applies_overrides(launch: Launch) -> None:
    result = launch("show", "qlora", "starcoder15b", "training.max_steps=100")
    assert result.code == 0, result.err
    assert "  max_steps: 100\n" in result.out


# --- origins -----------------------------------------------------------------------------------------------------


def test_origins_point_at_file_and_line() -> None:
    resolved = resolve("lora", "tiny-starcoder", ["training.learning_rate=1e-4"],
                       {"resources.nodes=2": "flag -N/--nodes 2"})
    lora_yaml, model_yaml = TINY / "lora.yaml", TINY / "model.yaml"
    assert resolved.where("data", "seq_length") == f"{lora_yaml}:{line_of(lora_yaml, 'seq_length:')}"
    assert resolved.where("method", "lora", "r") == f"{lora_yaml}:{line_of(lora_yaml, 'r: 8')}"
    assert resolved.where("model", "dtype") == f"{model_yaml}:{line_of(model_yaml, 'dtype:')}"
    assert resolved.where("training", "learning_rate") == "override training.learning_rate=1e-4"
    assert resolved.where("resources", "nodes") == "flag -N/--nodes 2"


def test_origin_of_an_unwritten_key_is_its_closest_written_section() -> None:
    lora_yaml = TINY / "lora.yaml"
    assert resolve("lora", "tiny-starcoder").where("training", "seed") == (
        f"{lora_yaml}:{line_of(lora_yaml, 'training:')}")
    # The latest layer that wrote into the section wins.
    assert resolve("lora", "tiny-starcoder", ["training.max_steps=5"]).where("training", "seed") == (
        "override training.max_steps=5")


def test_origins_are_relative_to_the_working_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(RECIPES_ROOT.parent)
    resolved = resolve("lora", "tiny-starcoder")
    line = line_of(TINY / "lora.yaml", "learning_rate:")
    assert resolved.where("training", "learning_rate") == f"recipes/tiny-starcoder/lora.yaml:{line}"


def test_local_paths_resolve_against_the_file_that_wrote_them(tmp_path: Path) -> None:
    recipe = resolve("lora", "tiny-starcoder").recipe
    assert recipe.data.source == str(RECIPES_ROOT / "assets" / "data" / "code.jsonl")
    assert recipe.model.config == str(TINY / "config.json")
    assert recipe.model.tokenizer == str(RECIPES_ROOT / "assets" / "tokenizer")
    assert recipe.model.name_or_path == "tiny-starcoder"  # not a local path: a hub id / name
    mine = resolve("lora", "tiny-starcoder", ["data.source=./mine.jsonl"]).recipe
    assert mine.data.source == str(tmp_path / "mine.jsonl")  # overrides resolve against the working directory
    assert resolve("full-ft", "starcoder15b").recipe.data.source == "smangrul/hf-stack-v1"


# --- SLURM time limits -------------------------------------------------------------------------------------------

SLURM_TIMES = [
    pytest.param("90", 90, id="MM"),
    pytest.param("1", 1, id="MM-one"),
    pytest.param("1:30", 2, id="MM:SS-rounds-up"),
    pytest.param("5:00", 5, id="MM:SS"),
    pytest.param("12:00:00", 720, id="HH:MM:SS"),
    pytest.param("00:20:00", 20, id="HH:MM:SS-leading-zeros"),
    pytest.param("0:00:30", 1, id="HH:MM:SS-seconds-round-up"),
    pytest.param("1-12", 2160, id="D-HH"),
    pytest.param("2-0", 2880, id="D-HH-zero-hours"),
    pytest.param("1-12:30", 2190, id="D-HH:MM"),
    pytest.param("1-12:30:15", 2191, id="D-HH:MM:SS"),
    pytest.param(" 12:00:00 ", 720, id="surrounding-space"),
]


@pytest.mark.parametrize(("text", "minutes"), SLURM_TIMES)
def test_slurm_minutes(text: str, minutes: int) -> None:
    assert slurm_minutes(text) == minutes


@pytest.mark.parametrize("text", ["abc", "1:2:3:4", "", "-5", "1-2-3", "1h", "0", "0:00", "0-0", "12:00:00.5"])
def test_slurm_minutes_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="SLURM time limit|must be positive"):
        slurm_minutes(text)


@pytest.mark.parametrize(("flag", "directive"), [
    pytest.param(["-t", "1-12"], "#SBATCH --time=2160", id="time-D-HH"),
    pytest.param(["-t", "1:30"], "#SBATCH --time=2", id="time-MM:SS"),
    pytest.param(["--mem", "64G"], "#SBATCH --mem=64G", id="mem"),
    pytest.param(["-p", "gpu"], "#SBATCH --partition=gpu", id="partition"),
    pytest.param(["-t", "90"], "#SBATCH --time=90", id="time-MM"),
    pytest.param(["--mem", "4096"], "#SBATCH --mem=4096", id="mem-megabytes"),
    pytest.param(["-p", "42"], "#SBATCH --partition=42", id="numeric-partition"),
    pytest.param(["-p", "null"], "#SBATCH --partition=null", id="partition-null"),
    pytest.param(["resources.time=90"], "#SBATCH --time=90", id="time-MM-override"),
])
def test_sbatch_flags_reach_the_script(launch: Launch, flag: list[str], directive: str) -> None:
    result = launch("lora", "tiny-starcoder", *flag, "--dry-run")
    assert result.code == 0, result.err
    assert directive in result.out.splitlines()


# --- the plan -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "flags", "world", "accumulation"), [
    pytest.param([], {}, 1, 2, id="one-rank"),
    pytest.param(["resources.tasks_per_node=2"], {}, 2, 1, id="two-ranks-per-node"),
    pytest.param([], {"resources.nodes=2": "flag -N/--nodes 2"}, 2, 1, id="two-nodes"),
    pytest.param([], {"resources.tasks_per_node=2": "flag --nproc 2"}, 2, 1, id="local-nproc-2"),
    pytest.param(["training.global_batch_size=32"], {"resources.nodes=2": "flag -N/--nodes 2"}, 2, 4,
                 id="bigger-global-batch"),
])
def test_gradient_accumulation_from_global_batch(
    overrides: list[str], flags: dict[str, str], world: int, accumulation: int
) -> None:
    resolved = resolve("lora", "tiny-llama", overrides, flags)
    assert resolved.recipe.training.per_device_batch_size == 4
    plan = make_plan(resolved)
    assert plan.world_size == world
    assert plan.gradient_accumulation_steps == accumulation
    assert plan.global_batch_size == resolved.recipe.training.global_batch_size


def test_gradient_accumulation_given_directly_is_kept() -> None:
    plan = make_plan(resolve("full-ft", "starcoder15b", ["resources.nodes=2"]))
    assert plan.gradient_accumulation_steps == 2
    assert plan.global_batch_size == 1 * 2 * 16
    assert plan.tokens_per_step == 32 * 2048


@pytest.mark.parametrize(("method", "model", "precision"), [
    pytest.param("full-ft", "starcoder15b", "bf16", id="starcoder15b-bfloat16"),
    pytest.param("lora", "tiny-starcoder", "no", id="tiny-float32"),
    pytest.param("qlora", "tiny-llama", "no", id="tiny-qlora-float32-compute"),
    pytest.param("qlora", "codegen-350m", "fp16", id="codegen-float16-compute"),
])
def test_precision_from_dtype(method: str, model: str, precision: str) -> None:
    assert make_plan(resolve(method, model)).precision == precision


def test_precision_follows_a_dtype_override() -> None:
    assert make_plan(resolve("full-ft", "tiny-starcoder", ["model.dtype=bfloat16"])).precision == "bf16"


@pytest.mark.parametrize(("method", "model", "overrides", "world", "per_node"), [
    pytest.param("full-ft", "starcoder15b", [], 8, 8, id="one-node-of-8"),
    pytest.param("full-ft", "starcoder15b", ["resources.nodes=2"], 16, 8, id="two-nodes-of-8"),
    pytest.param("full-ft", "starcoder15b", ["resources.nodes=3", "resources.gpus_per_node=4"], 12, 4, id="3x4"),
    pytest.param("full-ft", "starcoder15b", ["resources.nodes=2", "resources.tasks_per_node=4"], 8, 4,
                 id="tasks-per-node-wins"),
    pytest.param("lora", "tiny-starcoder", [], 1, 1, id="cpu-one-rank"),
])
def test_world_size_from_nodes_and_gpus(
    method: str, model: str, overrides: list[str], world: int, per_node: int
) -> None:
    plan = make_plan(resolve(method, model, overrides))
    assert (plan.world_size, plan.ranks_per_node) == (world, per_node)
    assert plan.nodes * plan.ranks_per_node == plan.world_size


@pytest.mark.parametrize(("method", "model", "config"), [
    pytest.param("full-ft", "starcoder15b", "deepspeed_zero3.yaml", id="deepspeed"),
    pytest.param("qlora", "starcoder15b", "fsdp_qlora.yaml", id="fsdp-qlora"),
    pytest.param("lora", "tiny-starcoder", "ddp.yaml", id="ddp"),
    pytest.param("qlora-1gpu", "starcoder15b", None, id="single"),
])
def test_default_accelerate_config(method: str, model: str, config: str | None) -> None:
    plan = make_plan(resolve(method, model))
    assert plan.accelerate_config == (str(ACCELERATE_DIR / config) if config else None)


def test_deepspeed_json_is_read_and_plan_serializes() -> None:
    plan = make_plan(resolve("full-ft", "starcoder15b"))
    assert plan.accelerate["distributed_type"] == "DEEPSPEED"
    assert plan.deepspeed is not None
    assert plan.deepspeed["zero_optimization"]["stage"] == 3
    assert "__path__" not in plan.deepspeed
    assert json.loads(json.dumps(plan.as_dict()))["world_size"] == 8


def test_dry_run_summary_shows_the_plan(launch: Launch, tmp_path: Path) -> None:
    result = launch("lora", "tiny-llama", "--local", "--nproc", "2", "--dry-run", "--name", "plan")
    assert result.code == 0, result.err
    assert f"run:         {tmp_path / 'runs' / 'tiny-llama' / 'plan'}" in result.out
    assert "executor:    local: 1 node(s) × 2 rank(s) = world size 2" in result.out
    assert "batch:       4 per device × GA 1 × 2 ranks = 8 sequences (2048 tokens) per step" in result.out
    assert "#SBATCH" not in result.out  # --local prints no sbatch script
    assert not (tmp_path / "runs").exists()


# --- tracking URIs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("uri", "shown"), [
    pytest.param("https://alice:s3cret@mlflow.example.com:5000", "https://mlflow.example.com:5000", id="user-password"),
    pytest.param("http://alice@mlflow.example.com/prefix", "http://mlflow.example.com/prefix", id="user-only"),
    pytest.param("https://mlflow.example.com/api/a@b", "https://mlflow.example.com/api/a@b", id="at-in-path"),
    pytest.param("sqlite:////runs/mlflow.db", "sqlite:////runs/mlflow.db", id="sqlite"),
    pytest.param("file:///tmp/mlruns", "file:///tmp/mlruns", id="file"),
    pytest.param("databricks", "databricks", id="no-scheme"),
    pytest.param("https://alice:p@ss@mlflow.example.com", "https://mlflow.example.com", id="at-in-password"),
])
def test_public_uri_strips_credentials(uri: str, shown: str) -> None:
    assert public_uri(uri) == shown


def test_dry_run_never_prints_tracking_credentials(launch: Launch, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://alice:s3cret@mlflow.example.com")
    result = launch("lora", "tiny-starcoder", "--dry-run")
    assert result.code == 0, result.err
    assert "tracking:    https://mlflow.example.com" in result.out
    assert "s3cret" not in result.out and "alice" not in result.out


def test_default_tracking_store_is_sqlite_in_the_runs_root(launch: Launch, tmp_path: Path) -> None:
    result = launch("lora", "tiny-starcoder", "--dry-run", "--runs-dir", str(tmp_path / "elsewhere"))
    assert result.code == 0, result.err
    assert f"tracking:    sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}" in result.out
