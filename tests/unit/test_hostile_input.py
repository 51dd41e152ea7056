"""Hostile input to `launch`, by class: YAML that explodes or recurses, keys and values nested absurdly deep, files
that are not files (FIFOs, devices, symlink loops), data rows of the wrong type or not text, globs that leave the data
directory. Each is one `launch: error:` line, exit 2, nothing written, and quick (an alarm turns a hang into a
failure instead of a stuck suite).

    .venv/bin/python -m pytest tests/unit/test_hostile_input.py -q
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.unit.launch_harness import CliResult, assert_one_error_line, line_of

Launch = Callable[..., CliResult]
SHOWN = "catalog/tiny-starcoder"
CHAIN = ["[&a0 [x,x,x,x,x,x,x,x,x]"] + [f"&a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
BOMB = ", ".join(CHAIN) + "]"  # 9**9 strings once expanded


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    def hung(*_: object) -> None:
        raise TimeoutError("launch hung on hostile input")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def assert_rejected(result: CliResult, prefix: str, says: tuple[str, ...], runs: Path) -> None:
    line = assert_one_error_line(result)
    assert line.startswith(f"launch: error: {prefix}"), line
    for part in says:
        assert part in line, f"{part!r} not in {line!r}"
    assert not runs.exists()


# --- YAML and key paths in overrides ------------------------------------------------------------------------------

OVERRIDE_CASES = [
    pytest.param("method.lora.target_modules=&a [c_attn, *a]", "override method.lora.target_modules: ",
                 ("an alias inside its own anchor",), id="recursive-anchor"),
    pytest.param(f"method.lora.target_modules={BOMB}", "override method.lora.target_modules: ",
                 ("expands to more than 10,000 values",), id="alias-bomb"),
    pytest.param("method.lora.target_modules=" + "[" * 5000 + "]" * 5000, "override method.lora.target_modules: ",
                 ("nested more than 16 levels deep",), id="deep-nesting"),
    pytest.param("method.lora.target_modules=" + "{a: " * 3000 + "1" + "}" * 3000,
                 "override method.lora.target_modules: ", ("nested more than 16 levels deep",), id="deep-mapping"),
    pytest.param("training." + ".".join(["a"] * 5000) + "=1", "override training.a.a.a",
                 ("a key path of 5001 parts", "at most 16 deep"), id="deep-key-path"),
]


@pytest.mark.parametrize(("override", "prefix", "says"), OVERRIDE_CASES)
def test_hostile_override(launch: Launch, tmp_path: Path, override: str, prefix: str, says: tuple[str, ...]) -> None:
    assert_rejected(launch("lora", "tiny-starcoder", override, "--dry-run"), prefix, says, tmp_path / "runs")


def test_anchors_and_aliases_within_bounds_still_work(launch: Launch) -> None:
    result = launch("lora", "tiny-starcoder", "method.lora.target_modules=[&m c_attn, *m, c_proj]", "--dry-run")
    assert result.code == 0, result.err


# --- recipe and config files in a user catalog --------------------------------------------------------------------

def write_method(model: Path, text: str) -> str:
    (model / "lora.yaml").write_text(text, encoding="utf-8")
    return f"{SHOWN}/lora.yaml"


def bomb_file(model: Path) -> tuple[str, tuple[str, ...]]:
    lines = ["method:", "  kind: lora", "x0: &x0 [a, a, a, a, a, a, a, a, a]"]
    lines += [f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]" for i in range(1, 9)]
    return write_method(model, "\n".join(lines) + "\n") + ":", ("expands to more than 10,000 values",)


def recursive_file(model: Path) -> tuple[str, tuple[str, ...]]:
    return write_method(model, "method: &m\n  kind: lora\n  self: *m\n") + ":", ("an alias inside its own anchor",)


def deep_file(model: Path) -> tuple[str, tuple[str, ...]]:
    text = "".join(f"{'  ' * i}k{i}:\n" for i in range(40)) + "  " * 40 + "v: 1\n"
    return write_method(model, text) + ":17: ", ("nested more than 16 levels deep",)


def symlink_loop(model: Path) -> tuple[str, tuple[str, ...]]:
    (model / "lora.yaml").unlink()
    (model / "lora.yaml").symlink_to("lora.yaml")
    return f"{SHOWN}/lora.yaml: ", ("cannot read: Too many levels of symbolic links",)


def fifo_recipe(model: Path) -> tuple[str, tuple[str, ...]]:
    (model / "lora.yaml").unlink()
    os.mkfifo(model / "lora.yaml")
    return f"{SHOWN}/lora.yaml: ", ("not a regular file (a FIFO)",)


def huge_recipe(model: Path) -> tuple[str, tuple[str, ...]]:
    with (model / "lora.yaml").open("a", encoding="utf-8") as handle:
        handle.write("# padding\n" * 200_000)
    return f"{SHOWN}/lora.yaml: ", ("larger than 1,000,000 bytes",)


def fifo_config(model: Path) -> tuple[str, tuple[str, ...]]:
    (model / "config.json").unlink()
    os.mkfifo(model / "config.json")
    return f"{SHOWN}/config.json: ", ("not a regular file (a FIFO)",)


def deep_config(model: Path) -> tuple[str, tuple[str, ...]]:
    (model / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    return f"{SHOWN}/config.json: ", ("JSON nested too deeply to read",)


FILE_CASES = [pytest.param(case, id=case.__name__.replace("_", "-")) for case in (
    bomb_file, recursive_file, deep_file, symlink_loop, fifo_recipe, huge_recipe, fifo_config, deep_config)]


@pytest.mark.parametrize("edit", FILE_CASES)
def test_hostile_recipe_file(launch: Launch, tmp_path: Path, user_catalog: Path,
                             edit: Callable[[Path], tuple[str, tuple[str, ...]]]) -> None:
    prefix, says = edit(user_catalog)
    assert_rejected(launch("lora", "tiny-starcoder", "--dry-run"), prefix, says, tmp_path / "runs")


@pytest.mark.parametrize("edit", [bomb_file, symlink_loop, fifo_recipe], ids=["bomb", "symlink-loop", "fifo"])
def test_one_hostile_file_does_not_hide_the_catalog(launch: Launch, user_catalog: Path,
                                                    edit: Callable[[Path], object]) -> None:
    edit(user_catalog)
    result = launch("recipes")
    assert result.code == 0, result.err
    assert "tiny-starcoder/full-ft" in result.out and "starcoder15b/qlora" in result.out
    assert result.err.count("\n") == 1 and "tiny-starcoder/lora not listed" in result.err, result.err


# --- data files and directories ------------------------------------------------------------------------------------

def use_data(model: Path, source: str, *extra: str) -> None:
    recipe = model / "lora.yaml"
    lines = recipe.read_text(encoding="utf-8").splitlines()
    lines[line_of(recipe, "source:") - 1] = f"  source: {source}"
    text = "\n".join(lines + list(extra)) + "\n"
    recipe.write_text(text.replace("format: code", "format: prompt_completion"), encoding="utf-8")


ROW_CASES = [
    pytest.param("train.jsonl", '{"prompt": 5, "completion": "x"}\n', "train.jsonl:1: column 'prompt' ",
                 ("must be text, got int",), id="number-for-text"),
    pytest.param("train.jsonl", '{"prompt": "a", "completion": null}\n', "train.jsonl:1: column 'completion' ",
                 ("must be text, got NoneType",), id="null-for-text"),
    pytest.param("train.jsonl", '{"prompt": "\\ud800", "completion": "x"}\n', "train.jsonl:1: column 'prompt' ",
                 ("lone surrogate", "not valid Unicode text"), id="lone-surrogate"),
    pytest.param("train.jsonl", "[" * 100_000 + "]" * 100_000 + "\n", "train.jsonl:1: ",
                 ("JSON nested too deeply",), id="deep-row"),
    pytest.param("train.json", json.dumps([{"prompt": "a", "completion": "b"}, {"prompt": "a"}]),
                 "train.json: row 2: missing column 'completion' ", ("format prompt_completion",), id="json-row"),
    pytest.param("train.json", '{"rows": ', "train.json:1: invalid JSON: ", (), id="json-invalid"),
    pytest.param("train.json", '"just text"', "train.json: ", ("expected an array of row objects, got str",),
                 id="json-not-rows"),
    pytest.param("train.json", "[]", "train.json: ", ("no rows (empty file)",), id="json-empty"),
    pytest.param("train.json", '{"prompt": "a", "completion": "b"}\n{"prompt": 1, "completion": "b"}\n',
                 "train.json:2: column 'prompt' ", ("must be text",), id="json-lines-in-a-json-file"),
    pytest.param("train.parquet", "prompt,completion\na,b\n", "train.parquet: ", ("not a Parquet file",),
                 id="parquet-not-parquet"),
]


@pytest.mark.parametrize(("filename", "content", "prefix", "says"), ROW_CASES)
def test_hostile_data_rows(launch: Launch, tmp_path: Path, user_catalog: Path, filename: str, content: str,
                           prefix: str, says: tuple[str, ...]) -> None:
    (user_catalog / filename).write_text(content, encoding="utf-8")
    use_data(user_catalog, f"./{filename}")
    assert_rejected(launch("lora", "tiny-starcoder", "--dry-run"), f"{SHOWN}/{prefix}", says, tmp_path / "runs")


def test_json_rows_that_are_right_pass(launch: Launch, user_catalog: Path) -> None:
    rows = [{"prompt": "def f():", "completion": " return 1"}] * 3
    (user_catalog / "train.json").write_text(json.dumps(rows), encoding="utf-8")
    use_data(user_catalog, "./train.json")
    result = launch("lora", "tiny-starcoder", "--dry-run")
    assert result.code == 0, result.err


@pytest.mark.parametrize(("kind", "prefix", "says"), [
    pytest.param("fifo", f"{SHOWN}/train.jsonl: ", "not a regular file (a FIFO)", id="fifo"),
    pytest.param("symlink-to-fifo", "pipe.jsonl: ", "not a regular file (a FIFO)", id="symlink-to-fifo"),
    pytest.param("symlink-to-device", f"{SHOWN}/lora.yaml:12: data.source: /dev/zero: ", "unsupported file type",
                 id="symlink-to-device"),
])
def test_a_data_file_that_is_not_a_file(launch: Launch, tmp_path: Path, user_catalog: Path, kind: str, prefix: str,
                                        says: str) -> None:
    target = user_catalog / "train.jsonl"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink-to-fifo":
        os.mkfifo(tmp_path / "pipe.jsonl")
        target.symlink_to(tmp_path / "pipe.jsonl")
    else:
        target.symlink_to("/dev/zero")
    use_data(user_catalog, "./train.jsonl")
    assert_rejected(launch("lora", "tiny-starcoder", "--dry-run"), prefix, (says,), tmp_path / "runs")


GLOB_CASES = [
    pytest.param("../*", "data.glob: ", ("'../*' must be a relative, non-empty pattern",), id="parent"),
    pytest.param("src/../../*", "data.glob: ", ("no '..'",), id="parent-inside"),
    pytest.param("/etc/*", "data.glob: ", ("'/etc/*' must be a relative",), id="absolute"),
    pytest.param("''", "data.glob: ", ("non-empty pattern",), id="empty"),
    pytest.param("'*.rs'", "data.source: ", ("nothing to read in", "with data.glob '*.rs' (no files)"),
                 id="matches-nothing"),
    pytest.param("'**/link.py'", "data.source: ", ("skipped: 1 outside the source directory",),
                 id="symlink-out-of-the-directory"),
]


@pytest.mark.parametrize(("glob", "where", "says"), GLOB_CASES)
def test_code_directory_globs_stay_inside(launch: Launch, tmp_path: Path, user_catalog: Path, glob: str, where: str,
                                         says: tuple[str, ...]) -> None:
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "a.py").write_text("def a():\n    return 1\n")
    (tmp_path / "secret.py").write_text("TOKEN = 'x'\n")
    (repo / "link.py").symlink_to(tmp_path / "secret.py")
    use_data(user_catalog, str(repo))
    recipe = user_catalog / "lora.yaml"
    lines = recipe.read_text().replace("format: prompt_completion", "format: code").splitlines()  # back to code
    lines.insert(line_of(recipe, "source:"), f"  glob: {glob}")
    recipe.write_text("\n".join(lines) + "\n")
    result = launch("lora", "tiny-starcoder", "--dry-run")
    line = assert_one_error_line(result)
    assert f"{SHOWN}/lora.yaml:" in line and where in line, line
    for part in says:
        assert part in line, line
    assert not (tmp_path / "runs").exists()
