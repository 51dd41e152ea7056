"""Helpers shared by the unit tests: run `launch` in-process, build a user recipe catalog, find lines in files.

Not a test module (no `test_` prefix); the fixtures that use it live in tests/unit/conftest.py.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from launchers.cli.main import main
from launchers.recipe.load import CATALOG_ENV, RECIPES_ROOT

ERROR_PREFIX = "launch: error: "
ASSETS = RECIPES_ROOT / "assets"


@dataclass(frozen=True)
class CliResult:
    """What one `launch` invocation returned and printed."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


def run_launch(capsys: pytest.CaptureFixture[str], *argv: str) -> CliResult:
    """`launchers.cli.main.main(argv)` in this process, with stdout/stderr captured separately."""
    capsys.readouterr()  # drop anything printed before
    code = main(list(argv))
    out, err = capsys.readouterr()
    return CliResult(code, out, err)


def assert_one_error_line(result: CliResult) -> str:
    """Exit 2, nothing on stdout, exactly one stderr line `launch: error: ...`, no traceback; returns the line."""
    assert result.code == 2, f"exit {result.code}, stderr: {result.err!r}"
    assert "Traceback" not in result.err
    assert result.out == "", f"bad input printed to stdout: {result.out!r}"
    assert len(result.err_lines) == 1, f"expected one stderr line, got: {result.err!r}"
    line = result.err_lines[0]
    assert line.startswith(ERROR_PREFIX), line
    return line


def make_user_catalog(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A $CLUSTERFT_RECIPES catalog under `root` holding a copy of tiny-starcoder; returns its model directory.

    The copy's `../assets/...` paths are rewritten to the shipped assets so it still resolves.
    """
    catalog = root / "catalog"
    model = catalog / "tiny-starcoder"
    shutil.copytree(RECIPES_ROOT / "tiny-starcoder", model)
    for path in model.glob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        path.write_text(text.replace("../assets/", f"{ASSETS}/"), encoding="utf-8")
    monkeypatch.setenv(CATALOG_ENV, str(catalog))
    return model


def line_of(path: Path, needle: str) -> int:
    """1-based number of the first line of `path` that contains `needle`."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not found in {path}")


def insert_after(path: Path, anchor: str, new_lines: str) -> int:
    """Insert `new_lines` after the first line containing `anchor`; returns the line number of the first new line."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if anchor in line)
    lines.insert(index + 1, new_lines)
    path.write_text("".join(lines), encoding="utf-8")
    return index + 2


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path → bytes), to show that nothing changed."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
