"""Files of a source directory held out for evaluation by path (named by data.eval_files, or data.eval_fraction of
them chosen by a seeded hash of their path): the eval split is exactly those files, every one of their tokens counts
(the packed eval split keeps its last partial row, padded), the eval stage draws its FIM spans from them, a split
that makes no row is one line, and a pattern that names nothing, or holds out everything, is refused at launch.

    .venv/bin/python -m pytest tests/unit/test_heldout_files.py -q
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from jobs.prepare.stage import build_cache, load_prepared
from jobs.spec.context import RankContext
from launchers.recipe.load import RECIPES_ROOT, resolve
from tests.unit.launch_harness import CliResult, assert_one_error_line

CODE = RECIPES_ROOT / "assets" / "data" / "code_dir"


def project(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "tests").mkdir()
    for name in ("a", "b", "c"):
        lines = f"def {name}():\n    return {ord(name)}\n"
        (root / "src" / f"{name}.py").write_text(lines * (3 if name == "c" else 30))
    (root / "tests" / "test_a.py").write_text("from src.a import a\n\n\ndef test_a():\n    assert a() == 97\n")
    return root


def test_the_eval_split_is_the_named_files_and_keeps_every_token(tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(RECIPES_ROOT / "assets" / "tokenizer")
    root = project(tmp_path / "repo")
    recipe = resolve("full-ft", "tiny-starcoder", [f"data.source={root}", "data.eval_fraction=0", "data.packing=true",
                                                   "data.seq_length=128",
                                                   "data.eval_files=['tests/**', src/c.py]"]).recipe
    report = build_cache(recipe, tokenizer, tmp_path / "cache", "k")
    assert report.heldout_files == ["src/c.py", "tests/test_a.py"] and report.source_rows == 4
    held = [(root / name).read_text() for name in report.heldout_files]
    expected = sum(len(tokenizer(text)["input_ids"]) + 1 for text in held)  # each document ends with EOS
    prepared = load_prepared(tmp_path / "cache")
    labels = [t for row in prepared["eval"]["labels"] for t in row if t != -100]
    assert len(labels) == expected == report.splits["eval"].tokens  # fewer than one row: padded, not dropped
    assert len(prepared["eval"]) == 1 and len(prepared["eval"][0]["input_ids"]) == recipe.data.seq_length
    train_text = tokenizer.decode([t for row in prepared["train"]["input_ids"] for t in row])
    assert "def a()" in train_text and "def c()" not in train_text and "test_a" not in train_text


def test_a_split_that_makes_no_row_is_one_line_not_an_index_error(tmp_path: Path) -> None:
    from jobs.spec.errors import UserError

    tokenizer = AutoTokenizer.from_pretrained(RECIPES_ROOT / "assets" / "tokenizer")
    root = project(tmp_path / "repo")
    recipe = resolve("full-ft", "tiny-starcoder", [f"data.source={root}", "data.eval_fraction=0", "data.packing=true",
                                                   "data.seq_length=1024", "data.eval_files=[src/c.py]"]).recipe
    with pytest.raises(UserError, match=r"data: the train split makes no row \(3 documents, \d+ tokens; "
                                        r"data.seq_length is 1024\): add data or lower data.seq_length"):
        build_cache(recipe, tokenizer, tmp_path / "cache", "k")
    assert not (tmp_path / "cache").exists()


def test_fim_spans_come_from_the_files_held_out_by_path(tmp_path: Path) -> None:
    from jobs.eval.stage import fim_examples_for
    from jobs.prepare.stage import ensure_prepared, read_report

    tokenizer = AutoTokenizer.from_pretrained(RECIPES_ROOT / "assets" / "tokenizer")
    context = RankContext(tmp_path / "runs" / "r1")
    recipe = resolve("full-ft", "tiny-coder", []).recipe  # data.eval_fraction 0.15 of the bundled project's files
    held_out = read_report(ensure_prepared(recipe, context))["heldout_files"]
    assert len(held_out) == 3 and all(name.endswith(".py") for name in held_out)
    examples = fim_examples_for(tokenizer, recipe, context)
    assert len(examples) == recipe.eval.fim_samples == 16
    assert {example.name for example in examples} == set(held_out), "every held-out file gives spans, nothing else"
    for example in examples:
        assert example.prefix + example.middle + example.suffix == (CODE / example.name).read_text()
    named = resolve("full-ft", "tiny-coder", ["data.eval_fraction=0", "data.eval_files=[tinyproj/mathops.py]"]).recipe
    assert {e.name for e in fim_examples_for(tokenizer, named, context)} == {"tinyproj/mathops.py"}
    pinned = resolve("full-ft", "tiny-coder", [f"eval.fim_source={CODE / 'README.md'}"]).recipe
    assert {e.name for e in fim_examples_for(tokenizer, pinned, context)} == {"README.md"}


def test_a_fraction_of_a_directory_is_chosen_by_path_and_stays_put(tmp_path: Path) -> None:
    from jobs.prepare.code_files import held_out

    data = resolve("full-ft", "tiny-starcoder", ["data.eval_fraction=0.25"]).recipe.data
    files = [tmp_path / f"m{i:02d}.py" for i in range(40)]
    chosen = held_out(tmp_path, files, data, seed=7)
    assert len(chosen) == 10 and chosen == held_out(tmp_path, list(reversed(files)), data, seed=7)
    grown = held_out(tmp_path, files + [tmp_path / f"n{i:02d}.py" for i in range(40)], data, seed=7)
    assert len(grown) == 20 and len(chosen & grown) >= 5, "most held-out files stay held out as the project grows"
    assert held_out(tmp_path, files, data, seed=8) != chosen
    assert held_out(tmp_path, files[:1], data, seed=7) == set(), "a single file trains"


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.eval_files=[a.py]"], "set one of data.eval_fraction, data.eval_source and data.eval_files, not "
                                 "data.eval_fraction and data.eval_files"),
    (["data.eval_fraction=0", "data.eval_files=[../secrets.py]"], "'../secrets.py' must be a relative, non-empty"),
    (["data.eval_fraction=0", "data.eval_files=[nothing/*.py]"], "data.eval_files: 'nothing/*.py' names no file "
                                                                   "that prepare reads in"),
    (["data.eval_fraction=0", "data.eval_files=[tinyproj, checks, '*.*']"], "data.eval_files holds out all 20 files"),
    (["data.eval_fraction=0", "data.eval_files=[tinyproj/stats.py]", "data.glob=tinyproj/*.md"], "data.glob"),
])
def test_bad_held_out_files_are_refused_with_one_line(overrides: list[str], message: str,
                                                      launch: Callable[..., CliResult]) -> None:
    assert message in assert_one_error_line(launch("full-ft", "tiny-coder", "--dry-run", *overrides))


def test_eval_files_need_a_code_directory(launch: Callable[..., CliResult]) -> None:
    line = assert_one_error_line(launch("lora", "tiny-llama", "--dry-run", "data.eval_fraction=0",
                                        "data.eval_files=[a.py]"))
    assert "data.eval_files holds files of a source directory out: it needs format code, not alpaca" in line
