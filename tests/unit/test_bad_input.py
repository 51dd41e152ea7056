"""Bad input to `launch`: exit 2, ONE stderr line `launch: error: <where>: <what>`, no traceback, nothing written.

Covers recipe overrides (`key.path=value`) and flags, recipe files in a user catalog ($CLUSTERFT_RECIPES), local
data files (reported as file:LINE), accelerate/DeepSpeed configs that disagree with the recipe, run names (invalid
or already taken) and LoRA target_modules that match no module of the real architecture (meta device).

Each case checks: the exit code, that stdout is empty, that stderr is exactly one line starting with
"launch: error: " followed by the file:line / override / flag that caused it, the key, and what is allowed
(or a "did you mean"), and that the runs root (./runs in the test's working directory) does not exist afterwards.

    .venv/bin/python -m pytest tests/unit/test_bad_input.py -q
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from launchers.recipe.load import RECIPES_ROOT
from tests.unit.launch_harness import (
    CliResult,
    assert_one_error_line,
    insert_after,
    line_of,
    tree,
)

Launch = Callable[..., CliResult]
TINY_LLAMA_LORA = RECIPES_ROOT / "tiny-llama" / "lora.yaml"
SLURM_FORMATS = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"


def assert_rejected(result: CliResult, prefix: str, says: tuple[str, ...], runs: Path) -> None:
    """One `launch: error: PREFIX...` line that contains every part of `says`; the runs root was not created."""
    line = assert_one_error_line(result)
    assert line.startswith(f"launch: error: {prefix}"), line
    for part in says:
        assert part in line, f"{part!r} not in {line!r}"
    assert not runs.exists(), f"bad input wrote {sorted(p.name for p in runs.rglob('*'))}"


# --- overrides and flags on the shipped catalog ------------------------------------------------------------------

# (argv, the line's start after "launch: error: ", parts the line must contain). A prefix of "" is not checked
# (see test_cross_section_error_names_its_origin for why).
OVERRIDE_AND_FLAG_CASES = [
    pytest.param(
        ["lora", "tiny-starcoder", "training.lerning_rate=1e-3", "--dry-run"],
        "override training.lerning_rate=1e-3: training.lerning_rate: ",
        ("unknown key", "did you mean learning_rate?"),
        id="unknown-key",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "method.lora.rank=4", "--dry-run"],
        "override method.lora.rank=4: method.lora.rank: ",
        ("unknown key", "allowed: alpha, bias, dropout, r, target_modules, use_rslora"),
        id="unknown-nested-key-lists-allowed",
    ),
    pytest.param(
        ["qlora", "tiny-starcoder", "method.quantization.quant=nf4", "--dry-run"],
        "override method.quantization.quant=nf4: method.quantization.quant: ",
        ("unknown key", "did you mean quant_type?"),
        id="unknown-key-in-optional-section",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "traning.max_steps=5", "--dry-run"],
        "override traning.max_steps=5: traning: ",
        ("unknown key", "did you mean training?"),
        id="unknown-section",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "training.max_steps=abc", "--dry-run"],
        "override training.max_steps=abc: training.max_steps: ",
        ("valid integer", "(got 'abc')"),
        id="wrong-type-int",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "training.max_steps=1.5", "--dry-run"],
        "override training.max_steps=1.5: training.max_steps: ",
        ("valid integer", "fractional part"),
        id="wrong-type-fraction",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "method.lora.target_modules=c_attn", "--dry-run"],
        "override method.lora.target_modules=c_attn: method.lora.target_modules: ",
        ("valid list", "(got 'c_attn')"),
        id="wrong-type-list",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "training=5", "--dry-run"],
        "override training=5: training: ",
        ("valid dictionary",),
        id="scalar-for-section",
    ),
    pytest.param(
        ["lora", "starcoder", "--dry-run"],
        "unknown model 'starcoder': ",
        ("did you mean starcoder15b?", "launch recipes"),
        id="unknown-model-close",
    ),
    pytest.param(
        ["lora", "no-such-model", "--dry-run"],
        "unknown model 'no-such-model': ",
        ("allowed: codegen-350m, ", "tiny-starcoder"),
        id="unknown-model-far",
    ),
    pytest.param(
        ["lorx", "tiny-starcoder", "--dry-run"],
        "model tiny-starcoder has no method 'lorx': ",
        ("did you mean lora?",),
        id="unknown-method-close",
    ),
    pytest.param(
        ["dpo", "tiny-starcoder", "--dry-run"],
        "model tiny-starcoder has no method 'dpo': ",
        ("allowed: full-ft, lora, qlora",),
        id="unknown-method-far",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "training.learning_rate=-1e-4", "--dry-run"],
        "override training.learning_rate=-1e-4: training.learning_rate: ",
        ("greater than 0", "(got -0.0001)"),
        id="negative-learning-rate",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "training.lr_scheduler=cosin", "--dry-run"],
        "override training.lr_scheduler=cosin: training.lr_scheduler: ",
        ("'cosine', 'linear', 'constant' or 'constant_with_warmup'", "(got 'cosin')"),
        id="literal-not-allowed",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "model.dtype=bf16", "--dry-run"],
        "override model.dtype=bf16: model.dtype: ",
        ("'bfloat16', 'float16' or 'float32'", "(got 'bf16')"),
        id="literal-dtype",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "data.seq_length=2048", "--dry-run"],
        "override data.seq_length=2048: data.seq_length 2048 exceeds ",
        ("1024 positions", "use at most 1024"),
        id="seq-length-beyond-positions",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "data.seq_length=0", "--dry-run"],
        "override data.seq_length=0: data.seq_length: ",
        ("greater than 0",),
        id="seq-length-zero",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "data.source=./missing.jsonl", "--dry-run"],
        "override data.source=./missing.jsonl: data.source: ",
        ("no such file or directory missing.jsonl",),
        id="missing-data-file",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "data.format=prompt_completion", "data.source=./", "--dry-run"],
        "override data.source=./: data.source: ",
        ("is a directory", "only format code reads directories", "prompt_completion"),
        id="data-directory-for-non-code",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "data.format=prompt_completion", "data.fields={bogus: text}", "--dry-run"],
        "override data.fields={bogus: text}: data.fields: ",
        ("renames bogus", "allowed: prompt, completion"),
        id="data-fields-unknown-column",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "model.config=./missing.json", "--dry-run"],
        "override model.config=./missing.json: model.config: ",
        ("no such file missing.json",),
        id="missing-model-config",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "distributed.accelerate_config=./missing.yaml", "--dry-run"],
        "override distributed.accelerate_config=./missing.yaml: distributed.accelerate_config: ",
        ("no such file missing.yaml",),
        id="missing-accelerate-config",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "-t", "1:2:3:4", "--dry-run"],
        "flag -t/--time 1:2:3:4: resources.time: ",
        ("not a SLURM time limit", SLURM_FORMATS),
        id="time-too-many-fields",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "-t", "abc", "--dry-run"],
        "flag -t/--time abc: resources.time: ",
        ("not a SLURM time limit", SLURM_FORMATS),
        id="time-not-a-time",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "-t", "0-0", "--dry-run"],
        "flag -t/--time 0-0: resources.time: ",
        ("must be positive",),
        id="time-zero",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "-N", "0", "--dry-run"],
        "flag -N/--nodes 0: resources.nodes: ",
        ("greater than 0", "(got 0)"),
        id="nodes-zero",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "-N", "two", "--dry-run"],
        "argument -N/--nodes: ",
        ("invalid int value: 'two'",),
        id="nodes-not-an-int",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "--gpus-per-node", "-1", "--dry-run"],
        "flag --gpus-per-node -1: resources.gpus_per_node: ",
        ("greater than or equal to 0",),
        id="gpus-negative",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "--nproc", "2", "--dry-run"],
        "flag --nproc: ",
        ("only with --local", "-N and --gpus-per-node"),
        id="nproc-without-local",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "--local", "--nproc", "0", "--dry-run"],
        "flag --nproc 0: ",
        ("must be at least 1",),
        id="nproc-zero",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "training.max_steps", "--dry-run"],
        "override 'training.max_steps': ",
        ("expected key.path=value", "training.learning_rate=1e-4"),
        id="override-without-equals",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "training..max_steps=5", "--dry-run"],
        "override 'training..max_steps=5': ",
        ("expected key.path=value",),
        id="override-empty-key-part",
    ),
    pytest.param(
        ["lora", "tiny-llama", "-N", "3", "--dry-run"],
        f"{TINY_LLAMA_LORA}:{line_of(TINY_LLAMA_LORA, 'global_batch_size:')}: training.global_batch_size 8 ",
        ("not a multiple of per_device_batch_size × world size = 4 × 3", "divisible by 12"),
        id="global-batch-not-divisible",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "training.epochs=1", "--dry-run"],
        "override training.epochs=1: training.epochs: ",
        ("set exactly one of training.max_steps and training.epochs",),
        id="max-steps-and-epochs",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "data.packing=false", "data.packed_attention=row", "--dry-run"],
        "override data.packed_attention=row: data.packed_attention: ",
        ("data.packed_attention row trains packed rows: set data.packing true",),
        id="row-attention-without-packing",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "method.kind=full", "--dry-run"],
        "override method.kind=full: method.kind: ",
        ("method.kind full trains every weight: remove method.lora",),
        id="kind-disagrees-with-sections",
    ),
    pytest.param(
        ["qlora", "starcoder15b", "method.quantization.storage_dtype=uint8", "--dry-run"],
        "",
        ("method.quantization.storage_dtype must be bfloat16", "(got uint8)"),
        id="fsdp-qlora-storage-dtype",
    ),
    pytest.param(
        ["qlora-1gpu", "starcoder15b", "-N", "2", "--dry-run"],
        "",
        ("distributed.backend single runs one rank but resources ask for 2", "ddp, fsdp or deepspeed-zero3"),
        id="single-backend-multi-rank",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "--name", "bad name", "--dry-run"],
        "--name 'bad name': ",
        ("letters, digits, '.', '_' or '-'",),
        id="invalid-name-space",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "--name", "../escape", "--dry-run"],
        "--name '../escape': ",
        ("letters, digits, '.', '_' or '-'",),
        id="invalid-name-path",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "--experiment", "a/b", "--dry-run"],
        "--experiment 'a/b': ",
        ("letters, digits, '.', '_' or '-'",),
        id="invalid-experiment",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "--bogus", "--dry-run"],
        "unrecognized arguments: ",
        ("--bogus",),
        id="unknown-flag",
    ),
    pytest.param(
        ["show", "lora", "tiny-starcoder", "training.lerning_rate=1"],
        "override training.lerning_rate=1: training.lerning_rate: ",
        ("did you mean learning_rate?",),
        id="show-unknown-key",
    ),
    pytest.param(
        ["show", "lora"],
        "show: the following arguments are required: ",
        ("MODEL",),
        id="show-missing-model",
    ),
    pytest.param(
        ["recipes", "extra"],
        "recipes: unrecognized arguments: ",
        ("extra",),
        id="recipes-extra-argument",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "--dry-run", "training.learning_rate=.inf"],
        "override training.learning_rate=.inf: training.learning_rate: ",
        ("finite number",),
        id="infinite-learning-rate",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "--dry-run", "training.max_steps=" + "9" * 5000],
        "override training.max_steps=...: ",
        ("not a usable number", "4300 digits"),
        id="integer-of-thousands-of-digits",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "--dry-run", "--dependency", "afterok:12;rm -rf ~"],
        "flag --dependency afterok:12;rm -rf ~: ",
        ("is not TYPE:JOBID",),
        id="dependency-garbage-under-dry-run",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "--local", "--dependency", "afterok:12"],
        "flag --dependency: SLURM only",
        (),
        id="dependency-on-a-local-run",
    ),
    pytest.param(
        ["lora", "tiny-starcoder", "--dry-run", "training.lerning_rate\n\x1b[2J=1"],
        "override training.lerning_rate\\n\\x1b[2J=1: ",
        ("unknown key",),
        id="newline-and-terminal-escape-stay-one-inert-line",
    ),
]


@pytest.mark.parametrize(("argv", "prefix", "says"), OVERRIDE_AND_FLAG_CASES)
def test_bad_override_or_flag(
    launch: Launch, tmp_path: Path, argv: list[str], prefix: str, says: tuple[str, ...]
) -> None:
    assert_rejected(launch(*argv), prefix, says, tmp_path / "runs")


def test_a_recipe_file_with_an_integer_of_thousands_of_digits(launch: Launch, user_catalog: Path,
                                                               tmp_path: Path) -> None:
    recipe = user_catalog / "lora.yaml"
    recipe.write_text(recipe.read_text().replace("max_steps: 30", "max_steps: " + "9" * 5000))
    line = assert_one_error_line(launch("lora", "tiny-starcoder", "--dry-run"))
    assert "catalog/tiny-starcoder/lora.yaml: a value is not a usable number" in line
    assert not (tmp_path / "runs").exists()


def test_a_runs_root_that_is_a_file(launch: Launch, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a user's file\n")
    for root in ("taken", "taken/runs"):
        line = assert_one_error_line(launch("lora", "tiny-starcoder", "--dry-run", "--runs-dir", root))
        assert f"flag --runs-dir {tmp_path / root}: {tmp_path / 'taken'} is not a directory" in line
    assert (tmp_path / "taken").read_text() == "a user's file\n"


# --- recipe files in a user catalog ------------------------------------------------------------------------------

Edit = Callable[[Path], tuple[str, tuple[str, ...]]]  # catalog/tiny-starcoder → (prefix, says)
SHOWN = "catalog/tiny-starcoder"  # how errors show the catalog (relative to the working directory)


def invalid_yaml(model: Path) -> tuple[str, tuple[str, ...]]:
    line = insert_after(model / "lora.yaml", "max_steps:", "  bad: value: other\n")
    return f"{SHOWN}/lora.yaml:{line}: invalid YAML: ", ("mapping values are not allowed here",)


def tab_indent(model: Path) -> tuple[str, tuple[str, ...]]:
    path = model / "model.yaml"
    line = line_of(path, "dtype:")
    path.write_text(path.read_text().replace("  dtype:", "\tdtype:"))
    return f"{SHOWN}/model.yaml:{line}: invalid YAML: ", ("'\\t'",)


def duplicate_key(model: Path) -> tuple[str, tuple[str, ...]]:
    line = insert_after(model / "lora.yaml", "max_steps:", "  learning_rate: 1.0e-4\n")
    return f"{SHOWN}/lora.yaml:{line}: training.learning_rate: duplicate key", ()


def duplicate_section(model: Path) -> tuple[str, tuple[str, ...]]:
    path = model / "lora.yaml"
    path.write_text(path.read_text() + "training:\n  max_steps: 5\n")
    line = len(path.read_text().splitlines()) - 1
    return f"{SHOWN}/lora.yaml:{line}: training: duplicate key", ()


def unknown_key_in_file(model: Path) -> tuple[str, tuple[str, ...]]:
    line = insert_after(model / "lora.yaml", "max_steps:", "  lerning_rate: 1.0e-4\n")
    return f"{SHOWN}/lora.yaml:{line}: training.lerning_rate: ", ("unknown key", "did you mean learning_rate?")


def bad_value_in_model_yaml(model: Path) -> tuple[str, tuple[str, ...]]:
    path = model / "model.yaml"
    line = line_of(path, "dtype:")
    path.write_text(path.read_text().replace("dtype: float32", "dtype: fp32"))
    return f"{SHOWN}/model.yaml:{line}: model.dtype: ", ("'bfloat16', 'float16' or 'float32'", "(got 'fp32')")


def negative_lr_in_file(model: Path) -> tuple[str, tuple[str, ...]]:
    path = model / "lora.yaml"
    line = line_of(path, "learning_rate:")
    path.write_text(path.read_text().replace("learning_rate: 3.0e-3", "learning_rate: -3.0e-3"))
    return f"{SHOWN}/lora.yaml:{line}: training.learning_rate: ", ("greater than 0",)


def not_a_mapping(model: Path) -> tuple[str, tuple[str, ...]]:
    (model / "lora.yaml").write_text("- method\n- data\n")
    return f"{SHOWN}/lora.yaml:1: ", ("a recipe file must be a mapping of sections, got list",)


def name_key(model: Path) -> tuple[str, tuple[str, ...]]:
    path = model / "model.yaml"
    path.write_text(path.read_text() + "name: mine\n")
    line = len(path.read_text().splitlines())
    return f"{SHOWN}/model.yaml:{line}: name: ", ("set by the catalog path, remove it",)


def not_utf8(model: Path) -> tuple[str, tuple[str, ...]]:
    (model / "lora.yaml").write_bytes(b"method:\n  kind: \xff\xfe\n")
    return f"{SHOWN}/lora.yaml: ", ("not UTF-8 text",)


def invalid_config_json(model: Path) -> tuple[str, tuple[str, ...]]:
    (model / "config.json").write_text('{"model_type": "gpt_bigcode",\n  n_positions: 1024}\n')
    return f"{SHOWN}/config.json:2: invalid JSON: ", ()


def config_without_model_type(model: Path) -> tuple[str, tuple[str, ...]]:
    (model / "config.json").write_text('{"n_positions": 1024}\n')
    return f"{SHOWN}/config.json: ", ("not a transformers config (no model_type)",)


FILE_CASES = [
    pytest.param(invalid_yaml, id="invalid-yaml"),
    pytest.param(tab_indent, id="invalid-yaml-tab"),
    pytest.param(duplicate_key, id="duplicate-key"),
    pytest.param(duplicate_section, id="duplicate-section"),
    pytest.param(unknown_key_in_file, id="unknown-key-in-file"),
    pytest.param(bad_value_in_model_yaml, id="bad-value-in-model-yaml"),
    pytest.param(negative_lr_in_file, id="negative-learning-rate-in-file"),
    pytest.param(not_a_mapping, id="file-not-a-mapping"),
    pytest.param(name_key, id="name-key-in-file"),
    pytest.param(not_utf8, id="file-not-utf8"),
    pytest.param(invalid_config_json, id="invalid-config-json"),
    pytest.param(config_without_model_type, id="config-without-model-type"),
]


def test_user_catalog_copy_is_valid(launch: Launch, user_catalog: Path) -> None:
    """The baseline for the file cases: the unedited copy resolves (from the user catalog) and dry-runs."""
    result = launch("lora", "tiny-starcoder", "--dry-run")
    assert result.code == 0, result.err
    assert "tiny-starcoder/lora (lora, ddp)" in result.out


@pytest.mark.parametrize("edit", FILE_CASES)
def test_bad_recipe_file(launch: Launch, tmp_path: Path, user_catalog: Path, edit: Edit) -> None:
    prefix, says = edit(user_catalog)
    assert_rejected(launch("lora", "tiny-starcoder", "--dry-run"), prefix, says, tmp_path / "runs")


# --- local data files (prompt_completion rows), named by the catalog recipe --------------------------------------

GOOD_ROW = '{"prompt": "def f():", "completion": " return 1"}\n'
DATA_CASES = [
    pytest.param(
        "train.jsonl", (GOOD_ROW * 2 + '{"prompt": "x", \n').encode(),
        f"{SHOWN}/train.jsonl:3: invalid JSON: ", ("column",), id="malformed-row",
    ),
    pytest.param(
        "train.jsonl", (GOOD_ROW + "\n" + '{"prompt": "x"}\n').encode(),
        f"{SHOWN}/train.jsonl:3: missing column 'completion' ",
        ("format prompt_completion", "columns here: prompt", "rename with data.fields"), id="row-missing-column",
    ),
    pytest.param(
        "train.jsonl", (GOOD_ROW + "[1, 2]\n").encode(),
        f"{SHOWN}/train.jsonl:2: ", ("expected a JSON object per row, got list",), id="row-not-an-object",
    ),
    pytest.param(
        "train.jsonl", GOOD_ROW.encode() + b'{"prompt": "\xff", "completion": "x"}\n',
        f"{SHOWN}/train.jsonl:2: ", ("not UTF-8 text",), id="row-not-utf8",
    ),
    pytest.param("train.jsonl", b"", f"{SHOWN}/train.jsonl: ", ("no rows (empty file)",), id="empty-file"),
    pytest.param("train.jsonl", b"\n  \n", f"{SHOWN}/train.jsonl: ", ("no rows (empty file)",), id="blank-file"),
    pytest.param(
        "train.csv", b"prompt,completion\n",
        f"{SHOWN}/lora.yaml:12: data.source: ", ("unsupported file type", "allowed: .jsonl, .json, .parquet"),
        id="unsupported-suffix",
    ),
]


@pytest.mark.parametrize(("filename", "content", "prefix", "says"), DATA_CASES)
def test_bad_data_file(
    launch: Launch, tmp_path: Path, user_catalog: Path, filename: str, content: bytes, prefix: str,
    says: tuple[str, ...],
) -> None:
    recipe = user_catalog / "lora.yaml"
    assert line_of(recipe, "source:") == 12  # the unsupported-suffix case names this line
    text = recipe.read_text()
    text = text.replace(text.splitlines()[11], f"  source: ./{filename}")
    recipe.write_text(text.replace("format: code", "format: prompt_completion"))
    (user_catalog / filename).write_bytes(content)
    assert_rejected(launch("lora", "tiny-starcoder", "--dry-run"), prefix, says, tmp_path / "runs")


# --- accelerate / DeepSpeed configs that disagree with the recipe --------------------------------------------------

ACCELERATE_HEAD = "# my cluster's accelerate config\ncompute_environment: LOCAL_MACHINE\n"
ACCELERATE_CASES = [
    pytest.param(
        "lora", "tiny-starcoder", ACCELERATE_HEAD + "distributed_type: MULTI_GPU\nmixed_precision: fp16\n", None,
        "configs/accelerate.yaml:4: mixed_precision: ", ("'fp16' disagrees with the recipe's dtype (no)",),
        id="mixed-precision",
    ),
    pytest.param(
        "lora", "tiny-starcoder", ACCELERATE_HEAD + "distributed_type: MULTI_GPU\nnum_processes: 8\n", None,
        "configs/accelerate.yaml:4: num_processes: ", ("8 disagrees with the world size (1)",),
        id="num-processes",
    ),
    pytest.param(
        "lora", "tiny-starcoder", ACCELERATE_HEAD + "distributed_type: FSDP\n", None,
        "configs/accelerate.yaml:3: distributed_type: ",
        ("'FSDP' but distributed.backend is ddp", "expected MULTI_GPU"),
        id="distributed-type",
    ),
    pytest.param(
        "full-ft", "starcoder15b",
        ACCELERATE_HEAD + "distributed_type: DEEPSPEED\ndeepspeed_config:\n  deepspeed_config_file: {json}\n",
        '{"gradient_accumulation_steps": 7, "train_micro_batch_size_per_gpu": "auto"}\n',
        "configs/ds.json: gradient_accumulation_steps: ", ("7 disagrees with the recipe (2)", '"auto"'),
        id="deepspeed-json",
    ),
]


@pytest.mark.parametrize(("method", "model", "yaml_text", "json_text", "prefix", "says"), ACCELERATE_CASES)
def test_accelerate_config_disagrees_with_recipe(
    launch: Launch, tmp_path: Path, method: str, model: str, yaml_text: str, json_text: str | None, prefix: str,
    says: tuple[str, ...],
) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    ds_json = configs / "ds.json"
    if json_text is not None:
        ds_json.write_text(json_text)
    accelerate = configs / "accelerate.yaml"
    accelerate.write_text(yaml_text.replace("{json}", str(ds_json)))
    result = launch(method, model, f"distributed.accelerate_config={accelerate}", "--dry-run")
    assert_rejected(result, prefix, says, tmp_path / "runs")


# --- run names and real submissions ------------------------------------------------------------------------------


def test_existing_run_name_is_never_overwritten(launch: Launch, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "tiny-starcoder" / "taken"
    (run / "checkpoints").mkdir(parents=True)
    (run / "recipe.yaml").write_text("# the earlier run's recipe\n")
    (run / "checkpoints" / "step-15.bin").write_bytes(b"\x00weights")
    before = tree(tmp_path / "runs")

    line = assert_one_error_line(launch("full-ft", "tiny-starcoder", "--local", "--name", "taken"))

    assert line.startswith(f"launch: error: run tiny-starcoder/taken already exists at {run}"), line
    assert "choose another --name" in line
    assert tree(tmp_path / "runs") == before


def test_dry_run_rejects_existing_run_name(launch: Launch, tmp_path: Path) -> None:
    (tmp_path / "runs" / "tiny-starcoder" / "taken").mkdir(parents=True)
    line = assert_one_error_line(launch("full-ft", "tiny-starcoder", "--dry-run", "--name", "taken"))
    assert "already exists" in line


def test_lora_targets_matching_nothing_fail_before_anything_is_written(launch: Launch, tmp_path: Path) -> None:
    """A real --local submission checks target_modules on the meta device (imports transformers) before writing."""
    result = launch("lora", "tiny-starcoder", "method.lora.target_modules=[foo,bar]", "--local")
    assert_rejected(
        result,
        "override method.lora.target_modules=[foo,bar]: method.lora.target_modules: ",
        ("none of ['foo', 'bar'] is a module of GPTBigCodeForCausalLM", "linear modules: c_attn, c_fc, c_proj"),
        tmp_path / "runs",
    )


def test_lora_targets_override_after_local_flag(launch: Launch, tmp_path: Path) -> None:
    result = launch("lora", "tiny-starcoder", "--local", "method.lora.target_modules=[foo,bar]")
    assert_rejected(result, "override method.lora.target_modules=[foo,bar]: method.lora.target_modules: ",
                    ("none of ['foo', 'bar']",), tmp_path / "runs")


@pytest.mark.parametrize(
    ("argv", "prefix"),
    [
        pytest.param(["qlora", "starcoder15b", "method.quantization.storage_dtype=uint8", "--dry-run"],
                     "override method.quantization.storage_dtype=uint8: ", id="fsdp-qlora-storage-dtype"),
        pytest.param(["qlora-1gpu", "starcoder15b", "-N", "2", "--dry-run"],
                     "flag -N/--nodes 2: ", id="single-backend-multi-rank"),
    ],
)
def test_cross_section_error_names_its_origin(launch: Launch, tmp_path: Path, argv: list[str], prefix: str) -> None:
    line = assert_one_error_line(launch(*argv))
    assert line.startswith(f"launch: error: {prefix}"), line
